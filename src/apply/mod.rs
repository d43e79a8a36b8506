//! The only writer: atomic files, ownership, journal and rollback, lock, systemctl.
