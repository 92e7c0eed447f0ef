"""promptq's domain and producer side: models, settings, submission, results, API, CLI."""
