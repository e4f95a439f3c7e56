"""One router per resource: jobs, batches, references, plus health and metrics."""
