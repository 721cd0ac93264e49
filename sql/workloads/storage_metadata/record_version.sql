-- storage_metadata workload: record a new version of an object, in one transaction: lock
-- the object (so versions of one key are serialized and lock order matches the lifecycle
-- delete's), clear the previous latest flag, add the version and point the object at it.
-- Weight 6. An object that does not exist (or was just deleted) gets no version.
\set n random_zipfian(1, 100000, 1.1)
\set lg random_gaussian(5000, 18000, 3.0)
\set size int(exp(:lg / 1000.0))
\set u random_exponential(0, 4999, 5.0)
BEGIN;
SELECT object_id, version_id
FROM objects
WHERE bucket = sm_bucket(:n) AND key = sm_key(:n)
FOR UPDATE;
UPDATE object_versions SET is_latest = false
WHERE bucket = sm_bucket(:n) AND key = sm_key(:n) AND is_latest;
WITH v AS (
    INSERT INTO object_versions (bucket, key, version_id, size_bytes, etag, is_latest,
                                 created_by, comment, tags)
    SELECT bucket, key, gen_random_uuid()::text, :size, md5(key || :size), true,
           'user' || :u, 'new revision', jsonb_build_object('reviewed', false)
    FROM objects
    WHERE bucket = sm_bucket(:n) AND key = sm_key(:n)
    RETURNING bucket, key, version_id, size_bytes, etag
)
UPDATE objects AS o
SET version_id = v.version_id, size_bytes = v.size_bytes, etag = v.etag, modified_at = now()
FROM v
WHERE o.bucket = v.bucket AND o.key = v.key;
COMMIT;
