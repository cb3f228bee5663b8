"""Shared plumbing: errors, device, seeding, progress bars, safe file I/O. One home for each fact."""
