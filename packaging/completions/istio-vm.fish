# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_istio_vm_global_optspecs
    string join \n root= config= output= v/verbose h/help V/version
end

function __fish_istio_vm_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_istio_vm_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_istio_vm_using_subcommand
    set -l cmd (__fish_istio_vm_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c istio-vm -n "__fish_istio_vm_needs_command" -l root -d 'Prefix every path read or written; under a root other than / nothing live (services, netfilter, users) is changed' -r -F
complete -c istio-vm -n "__fish_istio_vm_needs_command" -l config -d 'Configuration file [default: /etc/istio-vm/config.toml]' -r -F
complete -c istio-vm -n "__fish_istio_vm_needs_command" -l output -d 'Output format [default: text]' -r -f -a "text\t''
json\t''"
complete -c istio-vm -n "__fish_istio_vm_needs_command" -s v -l verbose -d 'More log detail on stderr (repeat for more)'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -s V -l version -d 'Print version'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -f -a "validate" -d 'Check a bundle without changing anything'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -f -a "install" -d 'Place the bundle, capture traffic and start the sidecar'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -f -a "uninstall" -d 'Restore everything install changed'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -f -a "verify" -d 'Explain whether the sidecar reaches istiod, and why not'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -f -a "capture" -d 'Traffic capture rules (iptables or nftables)'
complete -c istio-vm -n "__fish_istio_vm_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l bundle -d 'Bundle: a directory, a .tar.gz of one, or an https:// URL' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l sha256 -d 'Expected SHA-256 of the archive (.tar.gz, URL) or the bundle digest (directory); required for a URL' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l allow-env -d 'Accept this dangerous cluster.env variable (a loader or shell variable such as LD_LIBRARY_PATH, or EXEC_USER other than istio-proxy); repeatable. Shell syntax in a value is never accepted' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l root -d 'Prefix every path read or written; under a root other than / nothing live (services, netfilter, users) is changed' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l config -d 'Configuration file [default: /etc/istio-vm/config.toml]' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l output -d 'Output format [default: text]' -r -f -a "text\t''
json\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -l strict -d 'Treat warnings as errors'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -s v -l verbose -d 'More log detail on stderr (repeat for more)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand validate" -s h -l help -d 'Print help'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l bundle -d 'Bundle: a directory, a .tar.gz of one, or an https:// URL' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l sha256 -d 'Expected SHA-256 of the archive (.tar.gz, URL) or the bundle digest (directory); required for a URL' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l allow-env -d 'Accept this dangerous cluster.env variable (a loader or shell variable such as LD_LIBRARY_PATH, or EXEC_USER other than istio-proxy); repeatable. Shell syntax in a value is never accepted' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l root -d 'Prefix every path read or written; under a root other than / nothing live (services, netfilter, users) is changed' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l config -d 'Configuration file [default: /etc/istio-vm/config.toml]' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l output -d 'Output format [default: text]' -r -f -a "text\t''
json\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l check -d 'Show what would change; change nothing'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l diff -d 'Show a unified diff of every text file that changes (token redacted)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l no-capture -d 'Do not install or apply traffic capture rules'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -l no-start -d 'Do not start or restart services'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -s v -l verbose -d 'More log detail on stderr (repeat for more)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand install" -s h -l help -d 'Print help'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand uninstall" -l root -d 'Prefix every path read or written; under a root other than / nothing live (services, netfilter, users) is changed' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand uninstall" -l config -d 'Configuration file [default: /etc/istio-vm/config.toml]' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand uninstall" -l output -d 'Output format [default: text]' -r -f -a "text\t''
json\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand uninstall" -s v -l verbose -d 'More log detail on stderr (repeat for more)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand uninstall" -s h -l help -d 'Print help'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l wait -d 'Repeat until every check passes or this much time has passed' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l timeout -d 'Bound on each network step [default: 3s]' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l probe -d 'Also fetch URL from this VM and check it went through the sidecar' -r
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l textfile -d 'Also write the results as Prometheus metrics to FILE, for node_exporter\'s textfile collector (replaced atomically, mode 0644)' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l root -d 'Prefix every path read or written; under a root other than / nothing live (services, netfilter, users) is changed' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l config -d 'Configuration file [default: /etc/istio-vm/config.toml]' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l output -d 'Output format [default: text]' -r -f -a "text\t''
json\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -l skip-agent -d 'Do not check the local agent (istio.service, Envoy admin, DNS proxy)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -s v -l verbose -d 'More log detail on stderr (repeat for more)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand verify" -s h -l help -d 'Print help'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -l backend -d 'Netfilter backend' -r -f -a "auto\t''
iptables\t''
nftables\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -l family -d 'render: which family\'s iptables-restore input to print on stdout' -r -f -a "ipv4\t''
ipv6\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -l root -d 'Prefix every path read or written; under a root other than / nothing live (services, netfilter, users) is changed' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -l config -d 'Configuration file [default: /etc/istio-vm/config.toml]' -r -F
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -l output -d 'Output format [default: text]' -r -f -a "text\t''
json\t''"
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -l replace-foreign -d 'apply: replace ISTIO_* chains (and Istio-named nft tables) that istio-vm\'s record does not name, i.e. another tool\'s'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -s v -l verbose -d 'More log detail on stderr (repeat for more)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand capture" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand help; and not __fish_seen_subcommand_from validate install uninstall verify capture help" -f -a "validate" -d 'Check a bundle without changing anything'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand help; and not __fish_seen_subcommand_from validate install uninstall verify capture help" -f -a "install" -d 'Place the bundle, capture traffic and start the sidecar'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand help; and not __fish_seen_subcommand_from validate install uninstall verify capture help" -f -a "uninstall" -d 'Restore everything install changed'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand help; and not __fish_seen_subcommand_from validate install uninstall verify capture help" -f -a "verify" -d 'Explain whether the sidecar reaches istiod, and why not'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand help; and not __fish_seen_subcommand_from validate install uninstall verify capture help" -f -a "capture" -d 'Traffic capture rules (iptables or nftables)'
complete -c istio-vm -n "__fish_istio_vm_using_subcommand help; and not __fish_seen_subcommand_from validate install uninstall verify capture help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
