-- Starting data of the storage-metadata workload (see schema.sql), made by generate_series
-- in a few seconds. A psql script: run it after schema.sql, as the same role, with
-- `psql -v ON_ERROR_STOP=1 -f seed.sql`; the sizes are psql variables that `-v` overrides:
--
--   objects      live objects, numbered 1 .. objects (default 50 000); the pgbench scripts
--                draw object numbers from 1 .. 2 × 50 000, so half their upserts insert
--   audit_rows   audit log rows, spread from the start of the month `past_months` ago to
--                now (default 200 000)
--   hook_rows    hook executions over the last 30 days (default 100 000)
--   past_months  earlier months with a partition (default 2): with the current and the
--                next month, past_months + 2 partitions exist
--
-- Distributions: buckets, folders and departments are skewed (see the sm_* helpers);
-- sizes are log-normal (median e^11.5 ≈ 100 kB, σ = 1.8 in natural log units, so 1 % are
-- over 6 MB); creation times lean toward the recent past (the square of a uniform fraction
-- of two years). setseed makes a load reproducible.

\if :{?objects}
\else
    \set objects 50000
\endif
\if :{?audit_rows}
\else
    \set audit_rows 200000
\endif
\if :{?hook_rows}
\else
    \set hook_rows 100000
\endif
\if :{?past_months}
\else
    \set past_months 2
\endif

SELECT setseed(0.23);

INSERT INTO buckets (name, backend, storage_class, versioning) VALUES
    ('archive', 's3', 'STANDARD', true),
    ('media', 's3', 'STANDARD', false),
    ('backups', 'local', 'STANDARD_IA', true),
    ('reports', 'local', 'STANDARD', true);

-- The audit log's months: past_months back to the next one.
SELECT audit_log_create_partition(now() - make_interval(months => m))
FROM generate_series(0, :past_months) AS m;
SELECT audit_log_create_next_partition();

-- Objects 1 .. objects. z is a standard normal draw (Box-Muller; 1 - random() is in
-- (0, 1], so ln never sees 0).
INSERT INTO objects (bucket, key, size_bytes, content_type, etag, storage_class, metadata,
                     created_at, modified_at)
SELECT sm_bucket(n), sm_key(n), size, sm_content_type(n), md5(n || '-' || size),
       sm_storage_class(size), sm_metadata(n, n % 997), created,
       created + random() * (now() - created)
FROM (
    SELECT n,
           least(round(exp(11.5 + 1.8 * sqrt(-2 * ln(1 - random()))
                                      * cos(2 * pi() * random()))), 5e10)::bigint AS size,
           now() - random() ^ 2 * interval '730 days' AS created
    FROM generate_series(1, :objects) AS n
) AS g;

-- 0 to 3 earlier versions per object (1.5 on average), the last one current.
INSERT INTO object_versions (bucket, key, version_id, size_bytes, etag, is_latest,
                             created_by, comment, tags, created_at)
SELECT o.bucket, o.key, md5(o.object_id || ':' || v)::uuid::text,
       greatest(o.size_bytes + (v - 2) * 4096, 0), md5(o.etag || v),
       v = o.object_id % 4, o.metadata ->> 'owner',
       (ARRAY['initial upload', 'corrected amounts', 're-scanned', 'metadata fix'])[v],
       jsonb_build_object('reviewed', v > 1, 'approved', v = o.object_id % 4),
       o.created_at + (v - 1) * (o.modified_at - o.created_at) / 3
FROM objects AS o, generate_series(1, o.object_id % 4) AS v;

UPDATE objects AS o SET version_id = v.version_id
FROM object_versions AS v
WHERE v.bucket = o.bucket AND v.key = o.key AND v.is_latest;

-- The audit log: reads of a skewed set of objects by 5 000 users.
INSERT INTO audit_log (logged_at, action, bucket, key, user_id, client_addr, user_agent,
                       success, error, details)
SELECT t, sm_action(a), sm_bucket(n), sm_key(n), 'user' || u, sm_client_addr(u),
       sm_user_agent(u), a % 97 <> 0, CASE WHEN a % 97 = 0 THEN 'AccessDenied' END,
       jsonb_build_object('bytes', a * 37 % 1048576)
FROM (
    SELECT audit_log_month_start(now() - make_interval(months => :past_months))
             + random() * (now() - audit_log_month_start(now()
                                     - make_interval(months => :past_months))) AS t,
           1 + floor(:objects * random() ^ 3)::bigint AS n,
           floor(5000 * random() ^ 2)::bigint AS u,
           i AS a
    FROM generate_series(1, :audit_rows) AS i
) AS g;

-- Hook executions of the last 30 days; erp_sync is slow and fails more often.
INSERT INTO hook_executions (executed_at, hook_name, event_type, bucket, key, duration_ms,
                             success, error, payload, response)
SELECT now() - random() * interval '30 days', sm_hook(h),
       (ARRAY['OBJECT_CREATED', 'OBJECT_UPDATED', 'OBJECT_DELETED', 'VERSION_CREATED'])
           [1 + i % 4],
       sm_bucket(n), sm_key(n),
       round((exp(2 + random() * 3) * CASE WHEN h % 6 = 1 THEN 8 ELSE 1 END)::numeric, 3),
       i % (CASE WHEN h % 6 = 1 THEN 20 ELSE 200 END) <> 0,
       CASE WHEN i % (CASE WHEN h % 6 = 1 THEN 20 ELSE 200 END) = 0 THEN 'timeout' END,
       jsonb_build_object('object', n), jsonb_build_object('status', 'ok')
FROM (
    SELECT i, 1 + floor(:objects * random())::bigint AS n, floor(6 * random())::bigint AS h
    FROM generate_series(1, :hook_rows) AS i
) AS g;

ANALYZE buckets, objects, object_versions, audit_log, hook_executions;
