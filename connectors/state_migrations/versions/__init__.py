"""The state store's revisions, one file each (a package so that installs without ``-e`` ship them)."""
