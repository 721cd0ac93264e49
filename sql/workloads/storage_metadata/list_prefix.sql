-- storage_metadata workload: list a bucket's keys under a prefix (folder/year/), first
-- page of 100 in key order. Weight 15. Buckets are skewed as objects are (sm_bucket);
-- prefixes lean to the first folders and years (exponential over the 84 of them).
\set n random(1, 100000)
\set p random_exponential(0, 83, 4.0)
SELECT key, size_bytes, etag, modified_at
FROM objects
WHERE bucket = sm_bucket(:n) AND key LIKE sm_prefix(:p) || '%'
ORDER BY key
LIMIT 100;
