#!/usr/bin/env bash
# make bench: cnibox and the Go reference plugins (v1.9.1, ../shared/oracle) side by side,
# same configs, same machine, same run. Each iteration is a full ADD, CHECK, DEL of one
# container in its own throwaway namespaces; every step is timed separately and the
# medians and the Go/cnibox ratio are printed. Numbers, never assertions.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_N:-50}
CNIBOX=${CNIBOX:-target/release/cnibox}
ORACLE=${ORACLE:-target/oracle}
[ -x "$CNIBOX" ] || { echo "bench: build first (make build)"; exit 1; }
[ -x "$ORACLE/bridge" ] || ../shared/oracle/unpack "$ORACLE"

if [ "${1:-}" != --inner ]; then
  # Outer part: throwaway host and container namespaces, then the timing loop runs
  # inside the host namespace so only the plugin process itself is timed.
  work=$(mktemp -d /tmp/cnibox-bench.XXXXXX)
  hostns=cbxbench-h-$$
  contns=cbxbench-c-$$
  cleanup() {
    for ns in $(ip netns list | awk -v p="$contns-" 'index($1, p) == 1 {print $1}'); do
      ip netns del "$ns" || true
    done
    ip netns del "$contns" 2>/dev/null || true
    ip netns del "$hostns" 2>/dev/null || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  mkdir -p "$work/rs"
  for a in $("$CNIBOX" --list); do ln -s "$(readlink -f "$CNIBOX")" "$work/rs/$a"; done
  ip netns add "$hostns"
  ip netns add "$contns"
  ip netns exec "$hostns" ip link set lo up
  # a parent for macvlan: one end of a veth pair inside the bench's own host netns
  ip netns exec "$hostns" ip link add cbxbenchpar type veth peer name cbxbenchpeer
  ip netns exec "$hostns" ip link set cbxbenchpar up
  WORK=$work CONTNS=$contns ORACLE=$(readlink -f "$ORACLE") INPROC=$(readlink -f "${INPROC:-target/release/examples/inproc}") ip netns exec "$hostns" "$0" --inner
  exit
fi
work=$WORK
contns=$CONTNS

# now_ns: nanoseconds from the monotonic clock, without a fork.
now_ns() { local t=$EPOCHREALTIME; echo $(( ${t/./} * 1000 )); }

# step IMPL CMD CONF: run one plugin call in the host netns, print its duration in us.
step() {
  local dir=$1 cmd=$2 conf=$3 plugin
  plugin=$(jq -r .type <<<"$conf")
  local t0 t1 rc=0
  t0=$(now_ns)
  { time CNI_COMMAND="$cmd" CNI_CONTAINERID="${CID:-bench1}" CNI_NETNS="/run/netns/${CNS:-$contns}" \
    CNI_IFNAME=eth0 CNI_PATH="$dir" "$dir/$plugin" <<<"$conf" >"$work/out" 2>"$work/err"; } 2>"$work/time" || rc=$?
  t1=$(now_ns)
  [ $rc = 0 ] || { echo "bench: $dir/$plugin $cmd failed:"; cat "$work/out" "$work/err"; exit 1; }
  # wall us, then CPU (user+sys) us of the plugin and everything it ran
  echo "$(( (t1 - t0) / 1000 )) $(awk '{printf "%d", ($1+$2)*1000000}' "$work/time")"
}

TIMEFORMAT='%3U %3S'

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

scenario() {
  local label=$1 base=$2
  for impl in go rs; do
    local dir=$work/rs; [ $impl = go ] && dir=$ORACLE
    : >"$work/$impl.add"; : >"$work/$impl.check"; : >"$work/$impl.del"
    for i in $(seq "$N"); do
      local conf=${base//@DATA@/$work/data-$impl}
      step "$dir" ADD "$conf" >>"$work/$impl.add"
      local prev; prev=$(cat "$work/out")
      local cconf; cconf=$(jq -c --argjson p "$prev" '. + {prevResult: $p}' <<<"$conf")
      step "$dir" CHECK "$cconf" >>"$work/$impl.check"
      step "$dir" DEL "$cconf" >>"$work/$impl.del"
    done
  done
  for op in add check del; do
    local g r gc rc
    g=$(cut -d' ' -f1 <"$work/go.$op" | median); r=$(cut -d' ' -f1 <"$work/rs.$op" | median)
    gc=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/go.$op"); rc=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/rs.$op")
    printf '%-36s %-5s wall: go %6d cnibox %6d us %5.1fx | cpu: go %6d cnibox %6d us %5.1fx\n' "$label" "$op" \
      "$g" "$r" "$(awk -v g="$g" -v r="$r" 'BEGIN{print (r>0)?g/r:0}')" \
      "$gc" "$rc" "$(awk -v g="$gc" -v r="$rc" 'BEGIN{print (r>0)?g/r:0}')"
  done
}

# host-local alone, on an empty store and on one holding 2,000 reservations (written as
# the Go plugin writes them): ADD must cost the same, DEL too (neither reads every
# reservation). One warm-up ADD/DEL per store first (cnibox indexes a store it did not
# write on its first call; that one-off scan is not what is measured). The two stores
# are measured in alternation, so a change in the machine's load hits both alike.
hl_store_scenario() {
  local conf='{"cniVersion":"1.0.0","name":"hlbench","type":"host-local","ipam":{"type":"host-local","subnet":"10.97.0.0/16","dataDir":"@DATA@"}}'
  local n op impl i
  for impl in go rs; do
    local dir=$work/rs; [ $impl = go ] && dir=$ORACLE
    for n in 0 2000; do
      local data=$work/hl-$impl-$n
      mkdir -p "$data/hlbench"
      for ((i = 0; i < n; i++)); do
        printf 'pre%d\r\neth0' "$i" >"$data/hlbench/10.97.$((100 + i / 250)).$((1 + i % 250))"
      done
      local c=${conf//@DATA@/$data}
      step "$dir" ADD "$c" >/dev/null; step "$dir" DEL "$c" >/dev/null
      : >"$work/hl.$impl.$n.add"; : >"$work/hl.$impl.$n.del"
    done
    for i in $(seq "$N"); do
      for n in 0 2000; do
        local c=${conf//@DATA@/$work/hl-$impl-$n}
        step "$dir" ADD "$c" >>"$work/hl.$impl.$n.add"
        step "$dir" DEL "$c" >>"$work/hl.$impl.$n.del"
      done
    done
  done
  for n in 0 2000; do
    for op in add del; do
      local g r gc rc
      g=$(cut -d' ' -f1 <"$work/hl.go.$n.$op" | median); r=$(cut -d' ' -f1 <"$work/hl.rs.$n.$op" | median)
      gc=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/hl.go.$n.$op"); rc=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/hl.rs.$n.$op")
      printf '%-36s %-5s wall: go %6d cnibox %6d us %5.1fx | cpu: go %6d cnibox %6d us | floor %d us\n' \
        "host-local, $n reservations" "$op" "$g" "$r" "$(awk -v g="$g" -v r="$r" 'BEGIN{print (r>0)?g/r:0}')" "$gc" "$rc" "$floor"
    done
  done
  for op in add del; do
    for impl in go rs; do
      local e f ec fc name=cnibox; [ $impl = go ] && name=go
      e=$(cut -d' ' -f1 <"$work/hl.$impl.0.$op" | median); f=$(cut -d' ' -f1 <"$work/hl.$impl.2000.$op" | median)
      ec=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/hl.$impl.0.$op"); fc=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/hl.$impl.2000.$op")
      printf 'host-local %s %-6s 2,000 reservations vs empty: wall %5d vs %5d us = %4.2fx (above the floor: %4.2fx), cpu %5d vs %5d us = %4.2fx\n' \
        "$op" "$name" "$f" "$e" "$(awk -v a="$f" -v b="$e" 'BEGIN{print (b>0)?a/b:0}')" \
        "$(awk -v a="$f" -v b="$e" -v fl="$floor" 'BEGIN{print (b-fl>0)?(a-fl)/(b-fl):0}')" \
        "$fc" "$ec" "$(awk -v a="$fc" -v b="$ec" 'BEGIN{print (b>0)?a/b:0}')"
    done
  done
}


# chain_scenario LABEL CONFLIST: a runtime's whole chain per container, as libcni runs it:
# ADD through every plugin in order (each gets the previous result), CHECK in order with
# the final result, DEL in reverse order with it. Each plugin call is timed on its own;
# the whole chain is the sum. `runtimeConfig` (port mappings) is given to every plugin.
chain_scenario() {
  local label=$1 list=$2 rc='{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":8053,"containerPort":53,"protocol":"udp"}]}'
  local n; n=$(jq '.plugins | length' <<<"$list")
  for impl in go rs; do
    local dir=$work/rs; [ $impl = go ] && dir=$ORACLE
    for ((k = 0; k < n; k++)); do : >"$work/ch.$impl.$k.add"; : >"$work/ch.$impl.$k.check"; : >"$work/ch.$impl.$k.del"; done
    for i in $(seq "$N"); do
      local prev=null k conf
      for ((k = 0; k < n; k++)); do
        conf=$(jq -c --argjson k "$k" --argjson p "$prev" --argjson rc "$rc" \
          '.plugins[$k] + {cniVersion: .cniVersion, name: .name, runtimeConfig: $rc} + (if $p == null then {} else {prevResult: $p} end)' <<<"${list//@DATA@/$work/data-$impl}")
        step "$dir" ADD "$conf" >>"$work/ch.$impl.$k.add"
        prev=$(cat "$work/out")
      done
      for ((k = 0; k < n; k++)); do
        conf=$(jq -c --argjson k "$k" --argjson p "$prev" --argjson rc "$rc" \
          '.plugins[$k] + {cniVersion: .cniVersion, name: .name, runtimeConfig: $rc, prevResult: $p}' <<<"${list//@DATA@/$work/data-$impl}")
        step "$dir" CHECK "$conf" >>"$work/ch.$impl.$k.check"
      done
      for ((k = n - 1; k >= 0; k--)); do
        conf=$(jq -c --argjson k "$k" --argjson p "$prev" --argjson rc "$rc" \
          '.plugins[$k] + {cniVersion: .cniVersion, name: .name, runtimeConfig: $rc, prevResult: $p}' <<<"${list//@DATA@/$work/data-$impl}")
        step "$dir" DEL "$conf" >>"$work/ch.$impl.$k.del"
      done
    done
  done
  for op in add check del; do
    local tg=0 tr=0 tgc=0 trc=0
    for ((k = 0; k < n; k++)); do
      local g r gc rcpu name
      name=$(jq -r --argjson k "$k" '.plugins[$k].type' <<<"$list")
      g=$(cut -d' ' -f1 <"$work/ch.go.$k.$op" | median); r=$(cut -d' ' -f1 <"$work/ch.rs.$k.$op" | median)
      gc=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/ch.go.$k.$op"); rcpu=$(awk '{s+=$2} END {printf "%d", s/NR}' "$work/ch.rs.$k.$op")
      tg=$((tg + g)); tr=$((tr + r)); tgc=$((tgc + gc)); trc=$((trc + rcpu))
      printf '%-36s %-5s wall: go %6d cnibox %6d us %5.1fx | cpu: go %6d cnibox %6d us %5.1fx\n' "  $name" "$op" \
        "$g" "$r" "$(awk -v g="$g" -v r="$r" 'BEGIN{print (r>0)?g/r:0}')" \
        "$gc" "$rcpu" "$(awk -v g="$gc" -v r="$rcpu" 'BEGIN{print (r>0)?g/r:0}')"
    done
    printf '%-36s %-5s wall: go %6d cnibox %6d us %5.1fx | cpu: go %6d cnibox %6d us %5.1fx\n' "$label (whole chain)" "$op" \
      "$tg" "$tr" "$(awk -v g="$tg" -v r="$tr" 'BEGIN{print (r>0)?g/r:0}')" \
      "$tgc" "$trc" "$(awk -v g="$tgc" -v r="$trc" 'BEGIN{print (r>0)?g/r:0}')"
  done
}

floor=$(for i in $(seq 21); do t0=$(now_ns); /bin/true; t1=$(now_ns); echo $(( (t1 - t0) / 1000 )); done | median)
echo "cnibox bench: $N iterations per step; wall = median wall time of one plugin call (incl. IPAM),"
echo "cpu = mean user+sys CPU time of that call and everything it ran (IPAM, iptables)"
echo "floor: fork+exec of /bin/true from this shell takes $floor us"
echo "cnibox: $("$CNIBOX" --version), $(stat -c %s "$(readlink -f "$CNIBOX")") bytes; Go reference: v1.9.1"
# The static build (make static) next to the dynamic one (and the Go loopback plugin, a
# static Go binary): size, and start-up as a VERSION call (process start and exit, no
# kernel work): median wall time, and mean user+sys CPU from the shell's children totals
# (steadier than wall time on a busy machine).
# cpu_ms FILE: children's user+sys ms from the output of `times` (which must run in
# the measuring shell itself, not in a $(...) subshell).
cpu_ms() {
  tail -1 "$1" | awk '{n = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); n += p[1] * 60000 + p[2] * 1000 } printf "%d", n}'
}
startup() {
  local i t0 t1 a b
  for i in $(seq "$N"); do
    t0=$(now_ns); CNI_COMMAND=VERSION "$@" </dev/null >/dev/null; t1=$(now_ns)
    echo $(( (t1 - t0) / 1000 ))
  done | median >"$work/wall"
  times >"$work/times.a"
  for i in $(seq "$N"); do CNI_COMMAND=VERSION "$@" </dev/null >/dev/null; done
  times >"$work/times.b"
  a=$(cpu_ms "$work/times.a") b=$(cpu_ms "$work/times.b")
  echo "$(cat "$work/wall") $(( (b - a) * 1000 / N ))"
}
if [ -n "${STATIC:-}" ]; then
  [ -x "$STATIC" ] || { echo "bench: $STATIC missing (make static)"; exit 1; }
  for label in dynamic static "go loopback"; do
    case $label in
      dynamic) cmd=("$CNIBOX" loopback) ;;
      static) cmd=("$STATIC" loopback) ;;
      *) cmd=("$ORACLE/loopback") ;;
    esac
    read -r wall cpu < <(startup "${cmd[@]}")
    printf '%-36s %9d bytes | start-up (VERSION): wall %5d us, cpu %5d us\n' \
      "build: $label" "$(stat -c %s "$(readlink -f "${cmd[0]}")")" "$wall" "$cpu"
  done
fi
# add_floor: the least time any plugin process can take for the bridge + host-local ADD
# just measured (run right after it: it reads Go's figure from $work/go.add). The same
# applet code runs its ADDs in one long-lived process (bench/inproc.rs: no start-up at
# all), giving the wall time of the ADD's work and its CPU time; `perf record` samples
# tell how much of that CPU ran in user space. Everything else (the kernel's work on the
# veth pair, the netns move, addresses, routes, bridge port, reservation files, and what
# the kernel makes the caller wait for) no plugin can avoid. A plugin process that
# started as fast as /bin/true and spent no user time at all would still need
# floor + (wall - user); Go's ADD divided by that is the best ratio any plugin can reach.
add_floor() {
  local g wall cpu share user i n=$N
  local conf='{"cniVersion":"1.0.0","name":"addfloor","type":"bridge","bridge":"cbxfloor1","isGateway":true,"ipam":{"type":"host-local","subnet":"10.91.0.0/24","dataDir":"'"$work"'/addfloor"}}'
  [ -x "$INPROC" ] || { echo "add floor: $INPROC missing (make bench builds it), not measured"; return; }
  g=$(cut -d' ' -f1 <"$work/go.add" | median)
  for i in $(seq "$n"); do ip netns add "$contns-f$i"; done
  read -r wall cpu < <("$INPROC" "$n" "/run/netns/$contns-f" "$conf")
  if command -v perf >/dev/null; then
    perf record -q -e cpu-clock -F 20000 -o "$work/perf.data" "$INPROC" "$n" "/run/netns/$contns-f" "$conf" >/dev/null 2>&1
    share=$(perf script -i "$work/perf.data" -F comm,ip 2>/dev/null |
      awk '$1 == "cnibox-add" {n++; if ($2 !~ /^ffff/) u++} END {printf "%.3f", (n > 0) ? u / n : 1}')
  else
    share=1 # no perf: count all CPU as user time, which can only lower the floor
  fi
  for i in $(seq "$n"); do ip netns del "$contns-f$i"; done
  user=$(awk -v c="$cpu" -v s="$share" 'BEGIN{printf "%d", c * s}')
  printf 'add floor: bridge + host-local ADD in one process (%d ADDs, no start-up): wall %d us, cpu %d us, user %d us (%s of cpu samples%s)
' \
    "$n" "$wall" "$cpu" "$user" "$share" "$(command -v perf >/dev/null || echo ', perf not installed: all cpu counted as user')"
  printf 'add floor: a plugin process starting like /bin/true with no user time needs >= %d + %d = %d us: at best %.1fx Go'"'"'s %d us\n' \
    "$floor" "$((wall - user))" "$((floor + wall - user))" "$(awk -v g="$g" -v m="$((floor + wall - user))" 'BEGIN{print g / m}')" "$g"
}
scenario "bridge + host-local" '{"cniVersion":"1.0.0","name":"benchnet","type":"bridge","bridge":"cbxbench0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"@DATA@"}}'
add_floor
scenario "bridge + host-local + ipMasq(nft)" '{"cniVersion":"1.0.0","name":"benchnet","type":"bridge","bridge":"cbxbench0","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables","ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"@DATA@"}}'
scenario "bridge + host-local + ipMasq(ipt)" '{"cniVersion":"1.0.0","name":"benchnet","type":"bridge","bridge":"cbxbench0","isGateway":true,"ipMasq":true,"ipMasqBackend":"iptables","ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"@DATA@"}}'
CNIBOX_NO_INPROCESS=1 scenario "bridge + host-local, IPAM exec'd" '{"cniVersion":"1.0.0","name":"benchnet","type":"bridge","bridge":"cbxbench0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"@DATA@"}}'
scenario "ptp + host-local" '{"cniVersion":"1.0.0","name":"benchnet","type":"ptp","ipam":{"type":"host-local","subnet":"10.98.0.0/24","dataDir":"@DATA@"}}'
hl_store_scenario
chain_scenario "podman chain, nftables" '{"cniVersion":"1.0.0","name":"podnet","plugins":[
  {"type":"bridge","bridge":"cbxbench1","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables","hairpinMode":true,"ipam":{"type":"host-local","subnet":"10.96.0.0/24","dataDir":"@DATA@"}},
  {"type":"portmap","capabilities":{"portMappings":true},"backend":"nftables"},
  {"type":"firewall","backend":"nftables"},
  {"type":"tuning","mtu":1400,"sysctl":{"net.ipv4.conf.eth0.arp_notify":"1"},"dataDir":"@DATA@/tuning"}]}'
chain_scenario "podman chain, iptables" '{"cniVersion":"1.0.0","name":"podnet","plugins":[
  {"type":"bridge","bridge":"cbxbench1","isGateway":true,"ipMasq":true,"ipMasqBackend":"iptables","hairpinMode":true,"ipam":{"type":"host-local","subnet":"10.96.0.0/24","dataDir":"@DATA@"}},
  {"type":"portmap","capabilities":{"portMappings":true},"backend":"iptables"},
  {"type":"firewall","backend":"iptables"},
  {"type":"tuning","mtu":1400,"sysctl":{"net.ipv4.conf.eth0.arp_notify":"1"},"dataDir":"@DATA@/tuning"}]}'
chain_scenario "bridge + bandwidth" '{"cniVersion":"1.0.0","name":"bwnet","plugins":[
  {"type":"bridge","bridge":"cbxbench2","isGateway":true,"ipam":{"type":"host-local","subnet":"10.95.0.0/24","dataDir":"@DATA@"}},
  {"type":"bandwidth","ingressRate":10000000,"ingressBurst":100000,"egressRate":10000000,"egressBurst":100000}]}'
chain_scenario "macvlan + host-local" '{"cniVersion":"1.0.0","name":"mvnet","plugins":[
  {"type":"macvlan","master":"cbxbenchpar","mode":"bridge","ipam":{"type":"host-local","subnet":"10.94.0.0/24","dataDir":"@DATA@"}}]}'

# The kernel's own share of a portmap call, measured on cnibox's portmap under strace
# (syscall times only; strace's own overhead is outside them). Two costs no plugin can
# avoid, and the Go reference pays them too:
#  - a conntrack dump (UDP mappings: stale flows are flushed) walks the whole global
#    conntrack hash table, whatever the netns holds: the time of that one sendto();
#  - a commit that deleted nf_tables rules makes the kernel wait for an RCU grace
#    period when the process closes its nfnetlink socket (nft_rcv_nl_event flushes the
#    destroy work): the time of that one close().
kernel_floor() {
  if ! command -v strace >/dev/null; then
    echo "kernel floor: strace not installed, not measured"
    return
  fi
  local pm prev conf ct=() rcu=() i
  conf='{"cniVersion":"1.0.0","name":"floornet","type":"bridge","bridge":"cbxfloor0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.93.0.0/24","dataDir":"'"$work"'/floor"}}'
  prev=$(CNI_COMMAND=ADD CNI_CONTAINERID=floor CNI_NETNS="/run/netns/$contns" CNI_IFNAME=eth9 CNI_PATH="$work/rs" "$work/rs/bridge" <<<"$conf")
  pm=$(jq -nc --argjson p "$prev" '{cniVersion:"1.0.0",name:"floornet",type:"portmap",backend:"nftables",
    runtimeConfig:{portMappings:[{hostPort:9053,containerPort:53,protocol:"udp"}]},prevResult:$p}')
  for i in $(seq 11); do
    for cmd in ADD DEL; do
      CNI_COMMAND=$cmd CNI_CONTAINERID=floor CNI_NETNS="/run/netns/$contns" CNI_IFNAME=eth9 CNI_PATH="$work/rs" \
        strace -f -T -e trace=sendto,close -o "$work/floor.strace" "$work/rs/portmap" <<<"$pm" >/dev/null
      [ $cmd = ADD ] && ct+=("$(grep CTNETLINK "$work/floor.strace" | grep -o '<[0-9.]*>$' | tr -d '<>' | head -1)")
      [ $cmd = DEL ] && rcu+=("$(grep 'close(' "$work/floor.strace" | grep -o '<[0-9.]*>$' | tr -d '<>' | sort -n | tail -1)")
    done
  done
  CNI_COMMAND=DEL CNI_CONTAINERID=floor CNI_NETNS="/run/netns/$contns" CNI_IFNAME=eth9 CNI_PATH="$work/rs" "$work/rs/bridge" <<<"$conf" >/dev/null
  printf 'kernel floor: conntrack table walk (%s buckets) %d us; RCU grace period on closing an nf_tables socket after a delete %d us (medians of 11)\n' \
    "$(cat /proc/sys/net/netfilter/nf_conntrack_buckets 2>/dev/null || echo '?')" \
    "$(printf '%s\n' "${ct[@]}" | awk '{print int($1*1000000)}' | median)" \
    "$(printf '%s\n' "${rcu[@]}" | awk '{print int($1*1000000)}' | median)"
}
kernel_floor

# scale_scenario LABEL CONFLIST COUNT: COUNT containers attached one after another with
# nothing removed in between (a node filling up), then removed newest first. Prints the
# whole-chain latency of container #1, #50 and #COUNT for ADD and for DEL, and the
# median over all: a cost that grows with the number of attachments shows here.
scale_scenario() {
  local label=$1 list=$2 count=$3 impl i k
  local n; n=$(jq '.plugins | length' <<<"$list")
  for impl in go rs; do
    local dir=$work/rs; [ $impl = go ] && dir=$ORACLE
    : >"$work/sc.$impl.add"; : >"$work/sc.$impl.del"
    local prevs=()
    for ((i = 1; i <= count; i++)); do
      ip netns add "$contns-s$i"
      local rc prev=null conf total=0 t
      rc=$(printf '{"portMappings":[{"hostPort":%d,"containerPort":80,"protocol":"tcp"}]}' $((20000 + i)))
      for ((k = 0; k < n; k++)); do
        conf=$(jq -c --argjson k "$k" --argjson p "$prev" --argjson rc "$rc" \
          '.plugins[$k] + {cniVersion: .cniVersion, name: .name, runtimeConfig: $rc} + (if $p == null then {} else {prevResult: $p} end)' <<<"${list//@DATA@/$work/scale-$impl}")
        t=$(CID=scale$i CNS=$contns-s$i step "$dir" ADD "$conf" | cut -d' ' -f1)
        total=$((total + t)); prev=$(cat "$work/out")
      done
      echo "$i $total" >>"$work/sc.$impl.add"
      prevs[i]=$prev
    done
    for ((i = count; i >= 1; i--)); do
      local rc conf total=0 t
      rc=$(printf '{"portMappings":[{"hostPort":%d,"containerPort":80,"protocol":"tcp"}]}' $((20000 + i)))
      for ((k = n - 1; k >= 0; k--)); do
        conf=$(jq -c --argjson k "$k" --argjson p "${prevs[i]}" --argjson rc "$rc" \
          '.plugins[$k] + {cniVersion: .cniVersion, name: .name, runtimeConfig: $rc, prevResult: $p}' <<<"${list//@DATA@/$work/scale-$impl}")
        t=$(CID=scale$i CNS=$contns-s$i step "$dir" DEL "$conf" | cut -d' ' -f1)
        total=$((total + t))
      done
      echo "$i $total" >>"$work/sc.$impl.del"
      ip netns del "$contns-s$i"
    done
  done
  local op
  for op in add del; do
    local at
    for at in 1 50 "$count"; do
      local g r
      g=$(awk -v i="$at" '$1 == i {print $2}' "$work/sc.go.$op"); r=$(awk -v i="$at" '$1 == i {print $2}' "$work/sc.rs.$op")
      printf '%-36s %-5s wall: go %6d cnibox %6d us %5.1fx (container #%d of %d)\n' "$label" "$op" "$g" "$r" \
        "$(awk -v g="$g" -v r="$r" 'BEGIN{print (r>0)?g/r:0}')" "$at" "$count"
    done
    local g r
    g=$(cut -d' ' -f2 <"$work/sc.go.$op" | median); r=$(cut -d' ' -f2 <"$work/sc.rs.$op" | median)
    printf '%-36s %-5s wall: go %6d cnibox %6d us %5.1fx (median of %d)\n' "$label" "$op" "$g" "$r" \
      "$(awk -v g="$g" -v r="$r" 'BEGIN{print (r>0)?g/r:0}')" "$count"
  done
}
scale_scenario "podman chain, nftables, filling up" '{"cniVersion":"1.0.0","name":"scalenet","plugins":[
  {"type":"bridge","bridge":"cbxscale0","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables","hairpinMode":true,"ipam":{"type":"host-local","subnet":"10.92.0.0/23","dataDir":"@DATA@"}},
  {"type":"portmap","capabilities":{"portMappings":true},"backend":"nftables"},
  {"type":"firewall","backend":"nftables"},
  {"type":"tuning","mtu":1400,"dataDir":"@DATA@/tuning"}]}' "${BENCH_SCALE:-250}"
