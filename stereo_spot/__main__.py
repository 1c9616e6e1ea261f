"""``python -m stereo_spot``: the same command line as ``stereo-spot``."""

from stereo_spot.cli.main import main

if __name__ == "__main__":
    main()
