-- storage_metadata workload: get one object's metadata by bucket and key (a HEAD or the
-- lookup before a GET). Weight 35. Hot objects dominate: Zipf (s = 1.1) over the object
-- numbers 1 .. 100 000, of which seed.sql loads 1 .. 50 000.
\set n random_zipfian(1, 100000, 1.1)
SELECT object_id, size_bytes, content_type, etag, version_id, storage_class, metadata,
       modified_at
FROM objects
WHERE bucket = sm_bucket(:n) AND key = sm_key(:n);
