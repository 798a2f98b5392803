#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this host, as a test fixture for the
# Kubernetes backend. Source it after common.sh (and engine.sh for image imports).
#   ensure_k8s_binaries   install the Debian packages the node needs and build (once,
#                         cached by version under .cache/k8s/bin/) kube-apiserver,
#                         kubelet, kube-controller-manager, kube-scheduler, etcd,
#                         kube-router and the pause image's binary from Go modules
#   start_k8s_build       the same build in the background (ensure_k8s_binaries and
#                         k8s_node_up wait for it)
#   k8s_node_up           start etcd, the control plane, a second containerd, the
#                         kubelet and kube-router; wait until the node is Ready
#   k8s_node_import IMG…  copy images from the Docker engine into the node's containerd
#   k8s_node_down         stop all of it and remove what it added to the host
# Everything runs on loopback and on a bridge of its own (10.244.0.1/24); Docker's
# containerd, networks and iptables rules are left alone. The node's files live in
# .cache/k8s/node/; its admin kubeconfig is .cache/k8s/node/kubeconfig.
# docs/prds/0011-kubernetes-backend.md ("The test node") says why each setting is there.

if [[ -n "${_BOTTLE_K8S_SH:-}" ]]; then return 0; fi
_BOTTLE_K8S_SH=1

K8S_VERSION=v1.34.3
ETCD_VERSION=v3.6.13
KUBE_ROUTER_VERSION=v2.1.0
K8S_MODULES="$BOTTLE_ROOT/scripts/lib/k8s"
K8S_DIR="$BOTTLE_CACHE/k8s"
K8S_BIN="$K8S_DIR/bin"
K8S_NODE_DIR="$K8S_DIR/node"
K8S_NODE_NAME=bottle-node
K8S_BRIDGE=bottle-k8s0
K8S_NODE_IP=10.244.0.1
K8S_POD_SUBNET=10.244.0.0/24
K8S_SERVICE_RANGE=10.96.0.0/16
K8S_API_PORT=16443
K8S_ETCD_PORT=23791
K8S_ETCD_PEER_PORT=23801
K8S_KUBELET_PORT=10250
K8S_PAUSE_IMAGE=bottle-test/pause:1.0
# One test node per host (its bridge, ports and iptables chains are host-wide): the node
# dir of the checkout whose node runs is written here.
K8S_HOST_LOCK=/run/bottle-test-node
# The kubelet sets these host sysctls when it starts; k8s_node_down puts them back.
K8S_KUBELET_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
export K8S_NODE_DIR K8S_NODE_IP K8S_NODE_NAME K8S_KUBELET_PORT

_k8s_ctr() { ctr --address "$K8S_NODE_DIR/containerd.sock" -n k8s.io "$@"; }

# Reads the API's JSON answers: the project's Python when set up, else the system's.
_k8s_python() {
    if [[ -x "$BOTTLE_ROOT/.venv/bin/python" ]]; then "$BOTTLE_ROOT/.venv/bin/python" "$@"; else python3 "$@"; fi
}

ensure_k8s_packages() {
    local missing=() pkg
    command -v containerd >/dev/null 2>&1 || missing+=(containerd)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
        || missing+=(containernetworking-plugins)
    command -v ipset >/dev/null 2>&1 || missing+=(ipset)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if ((${#missing[@]})); then
        [[ $EUID -eq 0 ]] || die "the test node needs ${missing[*]} (apt-get install them as root)"
        local log="$BOTTLE_CACHE/logs/k8s-apt.log"
        mkdir -p "$BOTTLE_CACHE/logs"
        note "installing ${missing[*]} with apt-get (log: ${log#"$BOTTLE_ROOT"/})"
        export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
        { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}"; } >"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
    fi
    for pkg in go containerd ctr runc ipset iptables openssl curl; do
        command -v "$pkg" >/dev/null 2>&1 || die "the test node needs $pkg on PATH"
    done
}

# Build the packages of the pinned module in $1 (go.mod + go.sum under scripts/lib/k8s/)
# into .cache/k8s/bin/$2/, unless a build of exactly these pins is already there.
_k8s_go_build() {
    local module="$K8S_MODULES/$1" out="$K8S_BIN/$2" ldflags="$3" stamp want log
    shift 3
    want="$(find "$module" -maxdepth 1 -type f \( -name 'go.*' -o -name '*.go' \) | sort | xargs cat | sha256sum | cut -c1-16)"
    stamp="$out/.built-from"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        note "$(basename "$out"): cached"
        return 0
    fi
    mkdir -p "$out" "$BOTTLE_CACHE/logs"
    log="$BOTTLE_CACHE/logs/k8s-build-$(basename "$out").log"
    note "building $* (log: ${log#"$BOTTLE_ROOT"/})"
    local start=$SECONDS
    if ! (cd "$module" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w $ldflags" -o "$out/" "$@") >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "building $(basename "$out") failed (full log: $log)"
    fi
    echo "$want" >"$stamp"
    note "$(basename "$out"): built in $((SECONDS - start))s"
}

ensure_k8s_binaries() {
    ensure_k8s_packages
    local lock
    # One build at a time: a background build (start_k8s_build) holds this lock for its
    # whole run, so `scripts/k8s-node up` waits for it and then finds everything built.
    mkdir -p "$K8S_DIR"
    exec {lock}>"$K8S_DIR/build.lock"
    flock "$lock"
    _k8s_build_all
    exec {lock}>&-
}

# Build the node's binaries in the background, for a caller with other work to do while
# the compiler runs (scripts/test: everything but the Kubernetes tests). The packages are
# installed first, in the foreground (apt holds a lock of its own).
start_k8s_build() {
    ensure_k8s_packages
    mkdir -p "$K8S_DIR" "$BOTTLE_CACHE/logs"
    local lock log="$BOTTLE_CACHE/logs/k8s-build.log"
    exec {lock}>"$K8S_DIR/build.lock"
    # Locked before the fork, so no `up` can slip in between; the child keeps the lock.
    flock "$lock"
    (_k8s_build_all) >"$log" 2>&1 &
    exec {lock}>&-
    note "building in the background (log: ${log#"$BOTTLE_ROOT"/}); the Kubernetes tests wait for it"
}

_k8s_build_all() {
    local v="k8s.io/component-base/version" jobs=() job failed=0
    # Side by side: most of a cold build is compiling on both cores, but each link runs on one.
    _k8s_go_build kubernetes "kubernetes-$K8S_VERSION" \
        "-X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=34 -X $v.gitTreeState=clean" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler &
    jobs+=($!)
    {
        _k8s_go_build etcd "etcd-$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
        # go names the binary of .../server/v3 after "server".
        if [[ -x "$K8S_BIN/etcd-$ETCD_VERSION/server" ]]; then mv "$K8S_BIN/etcd-$ETCD_VERSION/server" "$K8S_BIN/etcd-$ETCD_VERSION/etcd"; fi
        _k8s_go_build kube-router "kube-router-$KUBE_ROUTER_VERSION" "" \
            github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
        _k8s_go_build pause pause "" .
    } &
    jobs+=($!)
    for job in "${jobs[@]}"; do wait "$job" || failed=1; done
    ((failed == 0)) || die "building the test node's binaries failed (see above)"
}

_k8s_pid_alive() { [[ -f "$K8S_NODE_DIR/$1.pid" ]] && kill -0 "$(cat "$K8S_NODE_DIR/$1.pid")" 2>/dev/null; }

# Start "$@" in its own session with its log in the node dir; records its pid as $name.pid.
_k8s_spawn() {
    local name="$1"
    shift
    setsid "$@" </dev/null >"$K8S_NODE_DIR/$name.log" 2>&1 &
    echo $! >"$K8S_NODE_DIR/$name.pid"
}

_k8s_api() {
    curl -sS --fail --max-time 10 --cacert "$K8S_NODE_DIR/pki/ca.crt" \
        -H "Authorization: Bearer $(cat "$K8S_NODE_DIR/pki/admin.token")" "$@"
}

# Wait up to $2 seconds for command "${@:3}" to succeed; $1 names what is awaited.
_k8s_wait() {
    local what="$1" limit="$2" i
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    return 1
}

_k8s_pki() {
    local p="$K8S_NODE_DIR/pki"
    mkdir -p "$p"
    (
        cd "$p"
        # Python 3.13 verifies strictly: the CA needs key usage, leaves key identifiers.
        leaf="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bottle test node CA" \
            -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
            -keyout apiserver.key -out apiserver.csr 2>/dev/null
        printf '%s\nsubjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' \
            "$leaf" "$K8S_NODE_IP" >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile apiserver.ext \
            -out apiserver.crt 2>/dev/null
        # The API server's client certificate for the kubelet (logs, exec); the kubelet
        # trusts the CA and refuses anonymous callers.
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
            -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
        printf '%s\nextendedKeyUsage=clientAuth\n' "$leaf" >client.ext
        openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext \
            -out kubelet-client.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        openssl rand -hex 24 >admin.token
        echo "$(cat admin.token),admin,admin,system:masters" >tokens.csv
        chmod 0600 ./*.key admin.token tokens.csv
    ) || die "making the test node's certificates failed"
}

_k8s_kubeconfig() {
    cat >"$K8S_NODE_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bottle-test-node
  cluster:
    server: https://127.0.0.1:$K8S_API_PORT
    certificate-authority: $K8S_NODE_DIR/pki/ca.crt
users:
- name: admin
  user:
    token: $(cat "$K8S_NODE_DIR/pki/admin.token")
contexts:
- name: bottle-test-node
  context: {cluster: bottle-test-node, user: admin}
current-context: bottle-test-node
EOF
    chmod 0600 "$K8S_NODE_DIR/kubeconfig"
}

_k8s_containerd_config() {
    local n="$K8S_NODE_DIR" root="$K8S_DIR/containerd-root"
    mkdir -p "$root" "$n/containerd-state" "$n/cni/net.d" "$n/cni/ipam" "$n/runc"
    cat >"$n/containerd.toml" <<EOF
version = 2
root = "$root"
state = "$n/containerd-state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$n/containerd.sock"
[ttrpc]
  address = "$n/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$K8S_PAUSE_IMAGE"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj makes every sandbox fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$n/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
EOF
    # ipMasq false: nothing a pod sends is NATed out of the host; pods reach only each other and the node.
    cat >"$n/cni/net.d/10-bottle-node.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "bottle-node", "plugins": [
  {"type": "bridge", "bridge": "$K8S_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$K8S_POD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$n/cni/ipam"}}]}
EOF
}

_k8s_kubelet_config() {
    cat >"$K8S_NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $K8S_NODE_IP
port: $K8S_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$K8S_NODE_DIR/containerd.sock
failSwapOn: false
failCgroupV1: false
# Else the kubelet adds KUBE-FIREWALL chains to the host's iptables, which Docker shares.
makeIPTablesUtilChains: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $K8S_NODE_DIR/pki/ca.crt}
authorization: {mode: Webhook}
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
podPidsLimit: 4096
EOF
}

_k8s_record_sysctls() {
    local key
    [[ -f "$K8S_NODE_DIR/host-sysctls" ]] && return 0
    for key in $K8S_KUBELET_SYSCTLS; do
        echo "$key=$(sysctl -n "$key" 2>/dev/null)"
    done >"$K8S_NODE_DIR/host-sysctls"
}

_k8s_bridge_up() {
    ip link show "$K8S_BRIDGE" >/dev/null 2>&1 || {
        ip link add "$K8S_BRIDGE" type bridge &&
            ip addr add "$K8S_NODE_IP/24" dev "$K8S_BRIDGE" &&
            ip link set "$K8S_BRIDGE" up
    } || die "creating the bridge $K8S_BRIDGE failed"
    # Docker's FORWARD policy is DROP and bridged frames pass iptables (br_netfilter):
    # let pods on this bridge reach each other. kube-router's chains come first in FORWARD.
    iptables -C FORWARD -i "$K8S_BRIDGE" -o "$K8S_BRIDGE" -m comment --comment bottle-test-node -j ACCEPT 2>/dev/null ||
        iptables -A FORWARD -i "$K8S_BRIDGE" -o "$K8S_BRIDGE" -m comment --comment bottle-test-node -j ACCEPT
}

k8s_node_up() {
    [[ $EUID -eq 0 ]] || die "the test node needs root (it runs a kubelet and a containerd)"
    local kb="$K8S_BIN/kubernetes-$K8S_VERSION" etcd="$K8S_BIN/etcd-$ETCD_VERSION/etcd"
    local router="$K8S_BIN/kube-router-$KUBE_ROUTER_VERSION/kube-router" n="$K8S_NODE_DIR" kc start=$SECONDS
    for b in "$kb/kube-apiserver" "$kb/kubelet" "$kb/kube-controller-manager" "$kb/kube-scheduler" "$etcd" "$router"; do
        [[ -x "$b" ]] || die "$b is not built (ensure_k8s_binaries builds it)"
    done
    if [[ -f "$K8S_HOST_LOCK" && "$(cat "$K8S_HOST_LOCK")" != "$n" ]] \
        && [[ -f "$(cat "$K8S_HOST_LOCK")/apiserver.pid" ]] && kill -0 "$(cat "$(cat "$K8S_HOST_LOCK")/apiserver.pid")" 2>/dev/null; then
        die "another test node runs on this host (from $(cat "$K8S_HOST_LOCK")); stop it first with its scripts/k8s-node down"
    fi
    k8s_node_down >/dev/null 2>&1 || true
    echo "$n" >"$K8S_HOST_LOCK"
    rm -rf "$n"
    mkdir -p "$n"
    _k8s_record_sysctls
    _k8s_pki
    _k8s_kubeconfig
    kc="$n/kubeconfig"
    _k8s_spawn etcd "$etcd" --data-dir "$n/etcd" --listen-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
        --initial-cluster "default=http://127.0.0.1:$K8S_ETCD_PEER_PORT"
    _k8s_bridge_up
    local p="$n/pki"
    _k8s_spawn apiserver "$kb/kube-apiserver" --etcd-servers="http://127.0.0.1:$K8S_ETCD_PORT" \
        --bind-address=127.0.0.1 --advertise-address="$K8S_NODE_IP" --secure-port="$K8S_API_PORT" \
        --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/ca.crt" \
        --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$p/sa.pub" \
        --service-account-signing-key-file="$p/sa.key" --token-auth-file="$p/tokens.csv" \
        --authorization-mode=Node,RBAC --service-cluster-ip-range="$K8S_SERVICE_RANGE" \
        --kubelet-preferred-address-types=InternalIP \
        --kubelet-client-certificate="$p/kubelet-client.crt" --kubelet-client-key="$p/kubelet-client.key"
    _k8s_containerd_config
    _k8s_spawn containerd containerd --config "$n/containerd.toml"
    _k8s_wait containerd 20 test -S "$n/containerd.sock" || die "the node's containerd did not start (log: $n/containerd.log)"
    k8s_node_import "$K8S_PAUSE_IMAGE"
    _k8s_wait apiserver 90 _k8s_api "https://127.0.0.1:$K8S_API_PORT/readyz" \
        || { tail -n 20 "$n/apiserver.log" >&2; die "kube-apiserver did not become ready (log: $n/apiserver.log)"; }
    note "API server ready after $((SECONDS - start))s"
    _k8s_kubelet_config
    _k8s_spawn kubelet "$kb/kubelet" --kubeconfig="$kc" --config="$n/kubelet.yaml" --root-dir="$n/kubelet" \
        --cert-dir="$n/kubelet-pki" --node-ip="$K8S_NODE_IP" --hostname-override="$K8S_NODE_NAME"
    _k8s_spawn controller-manager "$kb/kube-controller-manager" --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port=10357 --service-account-private-key-file="$p/sa.key" \
        --root-ca-file="$p/ca.crt" --use-service-account-credentials=false
    _k8s_spawn scheduler "$kb/kube-scheduler" --kubeconfig="$kc" --authentication-kubeconfig="$kc" \
        --authorization-kubeconfig="$kc" --leader-elect=false --bind-address=127.0.0.1 --secure-port=10359
    _k8s_wait "node Ready" 120 _k8s_node_ready \
        || { tail -n 20 "$n/kubelet.log" >&2; die "the node did not become Ready (log: $n/kubelet.log)"; }
    note "node Ready after $((SECONDS - start))s"
    # kube-router exits at once if the Node object does not exist yet, so it starts only now.
    _k8s_spawn kube-router "$router" --kubeconfig="$kc" --hostname-override="$K8S_NODE_NAME" \
        --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
        --enable-ipv6=false --enable-pod-egress=false --service-cluster-ip-range="$K8S_SERVICE_RANGE" \
        --health-port=0 --metrics-port=0
    _k8s_wait "kube-router's chains" 30 _k8s_router_ready \
        || { tail -n 20 "$n/kube-router.log" >&2; die "kube-router did not start enforcing NetworkPolicy (log: $n/kube-router.log)"; }
    _k8s_wait "the default ServiceAccount" 60 _k8s_api "https://127.0.0.1:$K8S_API_PORT/api/v1/namespaces/default/serviceaccounts/default" \
        || die "kube-controller-manager made no default ServiceAccount (log: $n/controller-manager.log)"
    note "node up in $((SECONDS - start))s (kubeconfig: $kc)"
}

_k8s_node_ready() {
    _k8s_api "https://127.0.0.1:$K8S_API_PORT/api/v1/nodes/$K8S_NODE_NAME" | _k8s_python -c '
import json, sys
conditions = json.load(sys.stdin).get("status", {}).get("conditions", [])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else 1)'
}

_k8s_router_ready() {
    _k8s_pid_alive kube-router && iptables -S FORWARD 2>/dev/null | grep -q -- '-j KUBE-ROUTER-FORWARD'
}

# Copy images from the Docker engine into the node's containerd, skipping those whose
# Docker image id was already imported (the node's image store is kept between runs).
k8s_node_import() {
    local image id stamp dir="$K8S_DIR/imported"
    mkdir -p "$dir"
    for image in "$@"; do
        if [[ "$image" == "$K8S_PAUSE_IMAGE" ]] && ! dk image inspect "$image" >/dev/null 2>&1; then
            cp "$K8S_BIN/pause/pause" "$K8S_MODULES/pause/pause"
            DOCKER_BUILDKIT=0 dk build -q -t "$image" "$K8S_MODULES/pause" >/dev/null || die "building $image failed"
            rm -f "$K8S_MODULES/pause/pause"
        fi
        id="$(dk image inspect --format '{{.Id}}' "$image" 2>/dev/null)" || die "image $image is not in the Docker engine"
        stamp="$dir/${image//[\/:]/_}"
        if [[ -f "$stamp" && "$(cat "$stamp")" == "$id" ]] && _k8s_ctr images ls -q | grep -qx "docker.io/$image"; then
            continue
        fi
        dk save "$image" | _k8s_ctr images import - >/dev/null || die "importing $image into the node failed"
        echo "$id" >"$stamp"
        note "imported $image into the node"
    done
}

# Best effort throughout: every step runs even when an earlier one finds nothing to do.
k8s_node_down() { (set +e +o pipefail; _k8s_node_down); }

_k8s_node_down() {
    local n="$K8S_NODE_DIR" p pid i t c ns
    # Pods first, while the kubelet runs, so it tears down sandboxes and their networks.
    if _k8s_pid_alive kubelet && _k8s_pid_alive apiserver; then
        for ns in $(_k8s_api "https://127.0.0.1:$K8S_API_PORT/api/v1/pods" 2>/dev/null | _k8s_python -c '
import json, sys
print("\n".join(sorted({p["metadata"]["namespace"] for p in json.load(sys.stdin)["items"]})))'); do
            _k8s_api -X DELETE "https://127.0.0.1:$K8S_API_PORT/api/v1/namespaces/$ns/pods?gracePeriodSeconds=0" >/dev/null 2>&1 || true
        done
        _k8s_wait "pods gone" 30 _k8s_no_sandboxes || true
    fi
    for p in kube-router scheduler controller-manager kubelet; do
        if _k8s_pid_alive "$p"; then kill "$(cat "$n/$p.pid")" 2>/dev/null || true; fi
    done
    if [[ -S "$n/containerd.sock" ]]; then
        for t in $(_k8s_ctr tasks ls -q 2>/dev/null); do _k8s_ctr tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
        sleep 0.5
        for t in $(_k8s_ctr tasks ls -q 2>/dev/null); do _k8s_ctr tasks delete -f "$t" >/dev/null 2>&1 || true; done
        for c in $(_k8s_ctr containers ls -q 2>/dev/null); do _k8s_ctr containers delete "$c" >/dev/null 2>&1 || true; done
    fi
    # The API server before etcd, or it hangs in shutdown.
    for p in kube-router scheduler controller-manager kubelet containerd apiserver etcd; do
        _k8s_pid_alive "$p" || continue
        pid="$(cat "$n/$p.pid")"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
    _k8s_host_cleanup
    rm -f "$n"/*.pid
    if [[ -f "$K8S_HOST_LOCK" && "$(cat "$K8S_HOST_LOCK")" == "$n" ]]; then rm -f "$K8S_HOST_LOCK"; fi
    return 0
}

_k8s_no_sandboxes() { [[ -z "$(_k8s_ctr tasks ls -q 2>/dev/null | grep -v '^$' || true)" ]]; }

# Remove what the node added to the host: kube-router's chains and ipsets (only its own
# names), our FORWARD rule and bridge, mounts under the node dir, the pods' cgroups, and
# the host sysctls the kubelet changed.
_k8s_host_cleanup() {
    local n="$K8S_NODE_DIR" ch rule s m c key value
    for ch in INPUT FORWARD OUTPUT; do
        iptables -S "$ch" 2>/dev/null | grep -- '-j KUBE-ROUTER-' | sed 's/^-A/-D/' | while read -r rule; do
            eval "iptables $rule" 2>/dev/null || true
        done
    done
    for ch in $(iptables -S 2>/dev/null | awk '/^-N KUBE-(ROUTER|POD-FW|NWPLCY)/ {print $2}'); do iptables -F "$ch" 2>/dev/null || true; done
    for ch in $(iptables -S 2>/dev/null | awk '/^-N KUBE-(ROUTER|POD-FW|NWPLCY)/ {print $2}'); do iptables -X "$ch" 2>/dev/null || true; done
    for s in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' || true); do ipset destroy "$s" 2>/dev/null || true; done
    iptables -D FORWARD -i "$K8S_BRIDGE" -o "$K8S_BRIDGE" -m comment --comment bottle-test-node -j ACCEPT 2>/dev/null || true
    grep -F " $n/" /proc/mounts 2>/dev/null | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    grep -F " $K8S_DIR/containerd-root/" /proc/mounts 2>/dev/null | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    ip link del "$K8S_BRIDGE" 2>/dev/null || true
    for c in /sys/fs/cgroup/*/kubepods; do
        [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    if [[ -f "$n/host-sysctls" ]]; then
        while IFS='=' read -r key value; do
            [[ -n "$value" ]] && sysctl -q -w "$key=$value" >/dev/null 2>&1 || true
        done <"$n/host-sysctls"
        rm -f "$n/host-sysctls"
    fi
}
