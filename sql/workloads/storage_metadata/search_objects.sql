-- storage_metadata workload: full-text search within a bucket (websearch syntax), the 20
-- best ranked. Weight 8. 16 phrases (sm_search_phrase), the first ones more frequent.
\set n random(1, 100000)
\set t random_exponential(0, 15, 3.0)
SELECT bucket, key, content_type, ts_rank(search, q) AS rank
FROM objects, websearch_to_tsquery('english', sm_search_phrase(:t)) AS q
WHERE bucket = sm_bucket(:n) AND search @@ q
ORDER BY rank DESC, key
LIMIT 20;
