"""What ``otpe-train`` does as a process, apart from training: stop signals and their relay to
a sweep's workers, the Hydra callbacks of a sweep, the run directory (its lock, Hydra's config
files, failure records), checks of the command line before Hydra runs, and a console that
outlives its reader."""
