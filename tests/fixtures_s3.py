"""Object-storage fixtures: a real S3 endpoint (moto server) on 127.0.0.1."""
