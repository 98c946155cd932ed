"""The archive job: plan (video ids, skip-done), the run's steps (discover, plan, execute,
commit), one video on a worker, joining segments, Parquet manifests, reports."""
