# Makes the top-level packages importable from tests without installing the project.
