"""Tooling for an AWS account (not the storage adapters, which are ``stereo_spot.adapters.aws``): the IAM roles and
policies each identity needs (``iam``, ``roles``), creating the buckets, tables and queue (``bootstrap``), and the
operator's commands against them (``ops``)."""
