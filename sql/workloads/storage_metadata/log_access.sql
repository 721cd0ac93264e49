-- storage_metadata workload: log one access in the audit log (the current month's
-- partition). Weight 15. Objects and users skewed as in get_object.sql and
-- record_object.sql; mostly GET and HEAD (sm_action); one access in 100 is denied.
\set n random_zipfian(1, 100000, 1.1)
\set u random_exponential(0, 4999, 5.0)
\set a random(0, 9)
\set bytes random_exponential(0, 100000000, 10.0)
\set denied random(1, 100)
INSERT INTO audit_log (action, bucket, key, user_id, client_addr, user_agent, success,
                       error, details)
VALUES (sm_action(:a), sm_bucket(:n), sm_key(:n), 'user' || :u, sm_client_addr(:u),
        sm_user_agent(:u), :denied > 1, CASE WHEN :denied = 1 THEN 'AccessDenied' END,
        jsonb_build_object('bytes', :bytes::bigint));
