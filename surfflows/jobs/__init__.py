"""jobflow jobs of surfflows and the Makers of single jobs; they read only their inputs."""
