//! Rule model, iptables-restore and nftables renderers, iptables-save parser, backend detection, apply/remove.
