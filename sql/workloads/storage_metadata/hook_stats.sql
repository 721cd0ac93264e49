-- storage_metadata workload: hook statistics over the last 1 to 24 hours, per hook and
-- event (the operator's dashboard). Weight 2.
\set hours random(1, 24)
SELECT hook_name, event_type, count(*) AS executions,
       count(*) FILTER (WHERE success) AS succeeded,
       count(*) FILTER (WHERE NOT success) AS failed,
       avg(duration_ms) AS avg_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms
FROM hook_executions
WHERE executed_at > now() - make_interval(hours => :hours)
GROUP BY hook_name, event_type
ORDER BY hook_name, event_type;
