"""The app's pages (a package so that an installed distribution ships them)."""
