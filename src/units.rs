//! systemd unit, drop-in, tmpfiles.d and sysusers.d rendering. Pure.
