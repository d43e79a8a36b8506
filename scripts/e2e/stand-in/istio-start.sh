#!/bin/bash
# STAND-IN for Istio's /usr/local/bin/istio-start.sh, for the e2e tests only.
# It handles the environment as Istio's tools/packaging/common/istio-start.sh
# does (reference §2.4: sidecar.env then cluster.env, relative to the working
# directory /, exported; the ISTIO_CUSTOM_IP_TABLES switch; the agent run as
# istio-proxy through `sudo -E`). Where Istio runs `pilot-agent
# istio-iptables`, this one removes every ISTIO_* rule by state (as
# `--cleanup-only` would) and, on start, puts in a marker chain commented
# "istio-start.sh stand-in": a test sees at once if the script touched
# netfilter although ISTIO_CUSTOM_IP_TABLES=true told it not to.
set -ea

ISTIO_SIDECAR_CONFIG=${ISTIO_SIDECAR_CONFIG:-./var/lib/istio/envoy/sidecar.env}
if [ -r "$ISTIO_SIDECAR_CONFIG" ]; then
    # shellcheck disable=SC1090
    . "$ISTIO_SIDECAR_CONFIG"
fi
ISTIO_CLUSTER_CONFIG=${ISTIO_CLUSTER_CONFIG:-./var/lib/istio/envoy/cluster.env}
if [ -r "$ISTIO_CLUSTER_CONFIG" ]; then
    # shellcheck disable=SC1090
    . "$ISTIO_CLUSTER_CONFIG"
fi
set +a

ISTIO_BIN_BASE=${ISTIO_BIN_BASE:-/usr/local/bin}
ISTIO_LOG_DIR=${ISTIO_LOG_DIR:-./var/log/istio}
NS=${ISTIO_NAMESPACE:-default}
ISTIO_SVC_IP=${ISTIO_SVC_IP:-$(hostname --all-ip-addresses | cut -d ' ' -f 1)}
POD_NAME=${POD_NAME:-$(hostname -s)}

remove_istio_rules() {
    local cmd
    for cmd in iptables ip6tables; do
        command -v "$cmd-save" >/dev/null || continue
        # Errors are ignored, as Istio's cleanup ignores them.
        "$cmd-save" | grep -v 'ISTIO_' | "$cmd-restore" || true
    done
}

if [ "${1:-}" = clean ]; then
    if [ "${ISTIO_CUSTOM_IP_TABLES:-}" != true ]; then
        remove_istio_rules
    fi
    exit 0
fi

if [ "${ISTIO_CUSTOM_IP_TABLES:-}" != true ]; then
    remove_istio_rules
    iptables -t nat -N ISTIO_OUTPUT
    iptables -t nat -A ISTIO_OUTPUT -m comment --comment "istio-start.sh stand-in" -j RETURN
    iptables -t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT
fi

EXEC_USER=${EXEC_USER:-istio-proxy}
read -r -a ISTIO_AGENT_FLAGS_ARRAY <<<"${ISTIO_AGENT_FLAGS:-}"

if [ "$EXEC_USER" = "${USER:-}" ]; then
    INSTANCE_IP=$ISTIO_SVC_IP POD_NAME=$POD_NAME POD_NAMESPACE=$NS \
        "$ISTIO_BIN_BASE/pilot-agent" proxy "${ISTIO_AGENT_FLAGS_ARRAY[@]}"
else
    exec sudo -E -u "$EXEC_USER" -s /bin/bash -c "INSTANCE_IP=$ISTIO_SVC_IP POD_NAME=$POD_NAME POD_NAMESPACE=$NS exec $ISTIO_BIN_BASE/pilot-agent proxy ${ISTIO_AGENT_FLAGS_ARRAY[*]} 2>> $ISTIO_LOG_DIR/istio.err.log >> $ISTIO_LOG_DIR/istio.log"
fi
