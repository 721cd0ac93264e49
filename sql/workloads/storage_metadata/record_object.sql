-- storage_metadata workload: record an object after an upload (insert, or overwrite the
-- existing key) and the run of the upload hook, in one transaction. Weight 12. Object
-- numbers are uniform over 1 .. 100 000, so about half the upserts insert at first; sizes
-- are log-normal (e^N(11.5, 2.2), cut at e^5 and e^18 bytes); uploaders lean to the first
-- of 5 000 users; one hook run in 50 fails.
\set n random(1, 100000)
\set lg random_gaussian(5000, 18000, 3.0)
\set size int(exp(:lg / 1000.0))
\set u random_exponential(0, 4999, 5.0)
\set h random(0, 5)
\set ms random_exponential(1, 30000, 8.0)
\set fail random(1, 50)
BEGIN;
INSERT INTO objects AS o (bucket, key, size_bytes, content_type, etag, storage_class,
                          metadata)
VALUES (sm_bucket(:n), sm_key(:n), :size, sm_content_type(:n), md5(:n || '-' || :size),
        sm_storage_class(:size), sm_metadata(:n, :u))
ON CONFLICT (bucket, key) DO UPDATE
SET size_bytes = EXCLUDED.size_bytes, etag = EXCLUDED.etag,
    storage_class = EXCLUDED.storage_class, metadata = o.metadata || EXCLUDED.metadata,
    modified_at = now()
RETURNING object_id;
INSERT INTO hook_executions (hook_name, event_type, bucket, key, duration_ms, success,
                             error, payload)
VALUES (sm_hook(:h), 'OBJECT_CREATED', sm_bucket(:n), sm_key(:n), :ms / 10.0, :fail > 1,
        CASE WHEN :fail = 1 THEN 'timeout' END, jsonb_build_object('size', :size::bigint));
COMMIT;
