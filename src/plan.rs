//! Desired state as a list of actions; `--check`/`--diff` print it, `apply`
//! executes it. Pure: reads nothing from the system.
