"""Flow makers composing surfflows jobs, campaign files and their runners, and submission
to jobflow-remote."""
