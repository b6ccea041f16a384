"""Production monitoring: sampled traffic and its retention, prompt drift (with sentence embeddings), feedback
from reviewers and citizens, alerts."""
