#!/usr/bin/env bash
# docs/deploy.md followed step by step, as an operator would, on a Debian 12 whose PID 1 is
# systemd: strongSwan from apt (charon-systemd under strongswan.service), mobike-vici from
# this checkout under the shipped unit, a gateway charon, a client connection, a silent
# uplink failure. Every command taken from the docs is run as the docs write it (`doc`
# refuses one the docs do not have); what an operator's machine has and a test machine has
# not (two uplinks, a gateway) is built here. Root, on a throwaway machine only: it installs
# packages and writes /etc.
#
#   bash tests/operator/systemd_deploy.sh        # from the checkout's top directory
#
# The machine's network: this script puts strongSwan and the controller into a network
# namespace `mob` (NetworkNamespacePath= drop-ins) with two uplinks through a router `rtr`
# to a gateway `gw`, so that nothing touches the network the machine itself uses.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DOC=docs/deploy.md
WORK=$(mktemp -d /tmp/deploy.XXXXXX)
failures=()
say() { echo "deploy: $*" >&2; }  # stderr: a doc command's output may be captured
pass() { say "ok: $*"; }
fail() { echo "deploy: FAIL: $*" >&2; failures+=("$1"); }
die() {
    echo "deploy: cannot go on: $*" >&2
    failures+=("$1")
    for unit in strongswan gw-charon; do
        say "journal of $unit (last 30 lines):"
        journalctl -u "$unit" -o cat --no-pager | tail -30
    done
    finish
}
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
finish() {
    if [ ${#failures[@]} -gt 0 ]; then
        say "journal of mobike-vici (last 40 lines):"
        journalctl -u mobike-vici -o cat --no-pager | tail -40
        echo "deploy: FAILED (${#failures[@]}): $(printf '%s; ' "${failures[@]}")" >&2
        exit 1
    fi
    say "all checks passed"
    exit 0
}

# The commands of the docs' ```sh blocks, one per line, indentation and comments cut.
doc_lines() {
    awk '/^ *```sh *$/{on=1; next} /^ *```/{on=0} on' "$DOC" | sed -E 's/^ +//; s/[[:space:]]+#.*$//'
}
in_doc() {
    doc_lines | grep -qxF -- "$1" || { echo "deploy: not a command of $DOC: $1" >&2; exit 1; }
}
# Run one command of the docs verbatim (doc_net: in the machine's network, namespace mob).
doc() { in_doc "$1"; say "\$ $1"; bash -c "$1"; }
doc_net() { in_doc "$1"; say "\$ $1   (network: mob)"; ip netns exec mob bash -c "$1"; }

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $until ] && return 1
        sleep 0.5
    done
}
events_json() { mobike-vici events 2>/dev/null; }
# jq -s: jq 1.6's -e judges only the last input's output, so select() over a stream misleads.
has_event() { events_json | jq -s -e --arg e "$1" 'any(.[]; .event == $e)' >/dev/null; }
main_pid() { systemctl show -p MainPID --value mobike-vici; }

# --- the machine: an operator's apt that answers yes; two uplinks and a gateway ------------
echo 'APT::Get::Assume-Yes "true";' > /etc/apt/apt.conf.d/90-assume-yes
apt-get update -q >/dev/null 2>&1 || die "apt-get update"

ip netns add mob && ip netns add rtr && ip netns add gw || die "netns"
ip -n mob link add m0 type veth peer name r0 netns rtr
ip -n mob link add m1 type veth peer name r1 netns rtr
ip -n rtr link add g0 type veth peer name eth0 netns gw
ip -n mob addr add 10.1.0.2/24 dev m0 && ip -n mob addr add 10.2.0.2/24 dev m1
ip -n rtr addr add 10.1.0.1/24 dev r0 && ip -n rtr addr add 10.2.0.1/24 dev r1
ip -n rtr addr add 192.0.2.1/24 dev g0 && ip -n gw addr add 192.0.2.2/24 dev eth0
ip -n gw addr add 10.88.0.1/32 dev lo
for l in mob:m0 mob:m1 mob:lo rtr:r0 rtr:r1 rtr:g0 rtr:lo gw:eth0 gw:lo; do
    ip -n "${l%%:*}" link set "${l#*:}" up
done
ip -n mob route add default via 10.1.0.1 dev m0 metric 100
ip -n mob route add default via 10.2.0.1 dev m1 metric 200
ip -n gw route add default via 192.0.2.1
# /proc/sys is read-only in the container: a namespace's own proc mount is not.
ip netns exec rtr unshare -m sh -c 'mount -t proc proc /proc && sysctl -qw net.ipv4.ip_forward=1' ||
    die "forwarding in rtr"
ip netns exec mob ping -c1 -W2 192.0.2.2 >/dev/null || die "mob cannot reach the gateway"
for unit in strongswan mobike-vici; do
    mkdir -p "/etc/systemd/system/$unit.service.d"
    printf '[Service]\nNetworkNamespacePath=/run/netns/mob\n' \
        > "/etc/systemd/system/$unit.service.d/00-test-network.conf"
done
systemctl daemon-reload
say "network: mob (m0 10.1.0.2, m1 10.2.0.2) -> rtr -> gw 192.0.2.2 (inner 10.88.0.1)"

# --- 1. strongSwan as usual ----------------------------------------------------------------
t0=$SECONDS
doc 'apt-get install charon-systemd strongswan-swanctl libstrongswan-standard-plugins' \
    >"$WORK/apt.log" 2>&1 || { tail "$WORK/apt.log"; die "apt-get install (docs step 1)"; }
say "strongSwan installed in $((SECONDS - t0)) s"
cat > /etc/swanctl/conf.d/home.conf <<'EOF'
connections {
    home {
        version = 2
        local_addrs = %any
        remote_addrs = 192.0.2.2
        proposals = aes128-sha256-x25519
        vips = 0.0.0.0
        local {
            auth = psk
            id = mob@example
        }
        remote {
            auth = psk
            id = gw@example
        }
        children {
            net {
                remote_ts = 10.88.0.0/24
                esp_proposals = aes128gcm16
                start_action = start
            }
        }
    }
}
secrets {
    ike-home {
        id-1 = mob@example
        id-2 = gw@example
        secret = "a test secret"
    }
}
EOF
doc 'systemctl enable --now strongswan' || die "strongswan does not start"
doc 'swanctl --load-all' >/dev/null || fail "swanctl --load-all"

# Kernels without ESP: this one has none (the docs' check says so), so kernel-libipsec.
if doc_net "ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x4d56 mode tunnel aead 'rfc4106(gcm(aes))' 0x0001020304050607080900010203040506070809 128"; then
    doc_net 'ip xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x4d56'
    say "this kernel has ESP: kernel-libipsec stays off"
else
    doc 'apt-get install libcharon-extra-plugins' >"$WORK/apt2.log" 2>&1 ||
        { tail "$WORK/apt2.log"; die "apt-get install libcharon-extra-plugins"; }
    doc 'install -m 644 swanctl/strongswan.d/kernel-libipsec.conf /etc/strongswan.d/kernel-libipsec.conf'
    doc 'systemctl restart strongswan' || die "strongswan does not restart"
fi
dpkg -s libcharon-extra-plugins >/dev/null 2>&1 || apt-get install -q libcharon-extra-plugins >/dev/null

# The gateway: a second charon-systemd, in namespace gw, with its own settings and socket
# (now: its kernel-libipsec comes with libcharon-extra-plugins, on this kernel or not).
mkdir -p /etc/gw
cat > /etc/gw/strongswan.conf <<'EOF'
charon {
    load_modular = no
    load = random nonce aes sha1 sha2 hmac kdf gcm openssl curve25519 x509 pubkey pem kernel-libipsec kernel-netlink socket-default vici attr updown
    plugins {
        vici {
            socket = unix:///run/gw-charon.vici
        }
    }
}
EOF
cat > /etc/gw/swanctl.conf <<'EOF'
connections {
    rw {
        version = 2
        local_addrs = 192.0.2.2
        proposals = aes128-sha256-x25519
        pools = rw
        local {
            auth = psk
            id = gw@example
        }
        remote {
            auth = psk
            id = mob@example
        }
        children {
            net {
                local_ts = 10.88.0.0/24
                esp_proposals = aes128gcm16
            }
        }
    }
}
pools {
    rw {
        addrs = 10.99.0.0/28
    }
}
secrets {
    ike-rw {
        id-1 = mob@example
        id-2 = gw@example
        secret = "a test secret"
    }
}
EOF
systemd-run -q --unit=gw-charon -p Type=notify -p NetworkNamespacePath=/run/netns/gw \
    --setenv=STRONGSWAN_CONF=/etc/gw/strongswan.conf /usr/sbin/charon-systemd ||
    die "the gateway's charon does not start"
swanctl --load-all --file /etc/gw/swanctl.conf --uri unix:///run/gw-charon.vici >/dev/null 2>&1 ||
    die "the gateway's config does not load"

# --- 2. prefer_best_path ------------------------------------------------------------------
doc 'install -m 644 swanctl/strongswan.d/mobike-vici.conf /etc/strongswan.d/mobike-vici.conf'
doc 'systemctl restart strongswan' || die "strongswan does not restart"
sas() { swanctl --list-sas --raw 2>/dev/null; }
tunnel_up() { sas | grep -q "state=INSTALLED" && ip netns exec mob ping -c1 -W1 10.88.0.1; }
wait_for 30 tunnel_up || { sas; journalctl -u strongswan -o cat | tail -20; die "no tunnel"; }
pass "charon-systemd's tunnel carries pings (10.88.0.1)"

# --- 3. the mobike { } policy -------------------------------------------------------------
printf 'mobike {\n    hold_down = 30s\n}\n' > /etc/swanctl/conf.d/mobike.conf

# --- 4. install and start the controller ----------------------------------------------------
t0=$SECONDS
doc 'apt-get install python3-venv jq' >/dev/null 2>&1 || die "apt-get install python3-venv jq"
doc 'python3 -m venv /opt/mobike-vici' || die "venv"
doc '/opt/mobike-vici/bin/pip install .' >"$WORK/pip.log" 2>&1 ||
    { tail -20 "$WORK/pip.log"; die "pip install"; }
say "mobike-vici installed in $((SECONDS - t0)) s"
doc 'ln -s /opt/mobike-vici/bin/mobike-vici /usr/local/bin/mobike-vici'
check "check-config says OK" doc 'mobike-vici check-config'
doc 'install -m 644 systemd/mobike-vici.service /etc/systemd/system/'
doc 'systemctl daemon-reload'
doc 'systemctl enable --now mobike-vici' || fail "systemctl enable --now mobike-vici"
check "the unit is active (Type=notify: READY came)" systemctl is-active -q mobike-vici
check "the controller tracks charon's IKE_SA" wait_for 20 has_event ike_sa_tracked
settings_met() {
    events_json | jq -s -e 'any(.[]; .event == "charon_settings_checked" and .unmet == [])' >/dev/null
}
check "with the drop-in installed, charon has every setting the controller relies on" \
    settings_met

# Item 8: the server's install carries no plotting stack.
size=$(du -sm /opt/mobike-vici | cut -f1)
say "the controller's venv: $size MB"
check "the venv is small (no matplotlib, numpy, pillow): $size MB < 100" [ "$size" -lt 100 ]
check "matplotlib is not installed" bash -c '! /opt/mobike-vici/bin/python -c "import matplotlib" 2>/dev/null'
echo '{"timestamp": "2026-01-01T00:00:00.000000Z", "event": "fault"}' > "$WORK/ev.jsonl"
mobike-vici timeline "$WORK/ev.jsonl" -o "$WORK/t.png" 2>"$WORK/timeline.err"
rc=$?
check "timeline without the plot extra: exit 1, says which extra" \
    bash -c "[ $rc = 1 ] && grep -qF \"pip install 'mobike-vici[plot]'\" $WORK/timeline.err"

# Check it (item 1): the docs' commands, from an operator's shell.
if doc 'mobike-vici status' >"$WORK/status.txt"; then pass "mobike-vici status (exit 0)"
else fail "mobike-vici status"; cat "$WORK/status.txt"; fi
check "status: no empty proposal line" bash -c "! grep -qE '^ *proposal *\$' $WORK/status.txt"
check "status: charon's proposal shown" grep -qE '^ +proposal [A-Z]' "$WORK/status.txt"
check "status: no line ending in a comma" bash -c "! grep -qE ', *\$' $WORK/status.txt"
check "status: the paths of the IKE_SA" grep -q '10.1.0.2.*192.0.2.2' "$WORK/status.txt"
if doc 'mobike-vici events' >"$WORK/events.txt"; then pass "mobike-vici events (exit 0)"
else fail "mobike-vici events"; cat "$WORK/events.txt"; fi
check "events: JSON lines" jq -e -s 'length > 0' "$WORK/events.txt"

# Item 3: the journal.
if doc "journalctl -u mobike-vici -o cat | jq -R 'fromjson? // empty'" >"$WORK/journal.json"
then pass "the docs' journalctl | jq command (exit 0)"; else fail "the docs' journalctl | jq command"; fi
check "... prints the events" jq -e -s 'map(select(.event == "ike_sa_tracked")) | length > 0' \
    "$WORK/journal.json"
# Item 2: the data-plane watch works under the shipped sandbox.
check "no esp_watch_unavailable under the shipped unit" \
    jq -e -s 'map(select(.event == "esp_watch_unavailable")) | length == 0' "$WORK/journal.json"

# --- a silent failure of the active uplink ---------------------------------------------------
ip netns exec mob ping -D -O -i 0.1 10.88.0.1 >"$WORK/ping.log" 2>&1 &
pinger=$!
sleep 3
active=$(mobike-vici status --json | jq -r '.ike_sas[0].local' | sed 's/\[.*//')
say "active uplink $active; the router now drops everything from and to it (its link stays up)"
fault=$(date +%s.%N)
ip netns exec rtr nft -f - <<EOF
table inet fault {
    chain forward {
        type filter hook forward priority 0;
        ip saddr $active drop
        ip daddr $active drop
    }
}
EOF
moved() { events_json | jq -s -e --arg a "$active" \
    'any(.[]; .event == "handover_completed" and (.local | startswith($a + "[") | not))'; }
if wait_for 30 moved; then pass "the controller moved the IKE_SA off $active"
else fail "the controller moved the IKE_SA off $active"; fi
events_json > "$WORK/after.json"
reason=$(jq -r --arg a "$active" 'select(.event == "path_down" and (.local | startswith($a + "[")))
    | .reason' "$WORK/after.json" | tail -1)
check "the data-plane watch saw the stall (inbound_stalled)" \
    jq -s -e 'any(.[]; .event == "inbound_stalled")' "$WORK/after.json"
say "figure: path_down reason $reason (data_plane: the watch's probe burst; probe_timeout: the probes)"
python3 - "$fault" "$WORK/after.json" <<'PY'
import json, sys
from datetime import datetime
fault = float(sys.argv[1])
for line in open(sys.argv[2]):
    ev = json.loads(line)
    if ev["event"] in ("inbound_stalled", "path_down", "handover_completed"):
        t = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
        if t > fault:
            print(f"deploy: figure: {ev['event']} {ev.get('reason', '')} {1000 * (t - fault):.0f} ms"
                  " after the fault")
PY
replies_after() { awk -v f="$fault" -F'[][]' '/time=/ && $2 > f + 0 {n++} END {exit !(n > 0)}' "$WORK/ping.log"; }
check "pings through the tunnel came back after the move" wait_for 20 replies_after
kill "$pinger" 2>/dev/null
wait "$pinger" 2>/dev/null
doc 'journalctl -u mobike-vici -p warning' >"$WORK/warnings.txt"
check "journalctl -p warning shows path_down" grep -q '"event": "path_down"' "$WORK/warnings.txt"
check "... and not the info events" bash -c "! grep -q '\"event\": \"ike_sa_tracked\"' $WORK/warnings.txt"
prio=$(journalctl -u mobike-vici -o json | jq -r 'select(.MESSAGE | fromjson? | .event == "path_down") | .PRIORITY' | head -1)
check "path_down has journal priority 4 (got $prio)" [ "$prio" = 4 ]
doc "journalctl -u mobike-vici -o json | jq -r 'select(.SYSLOG_IDENTIFIER == \"mobike-vici\") | .MESSAGE | fromjson? | .event'" \
    >"$WORK/names.txt"
check "the docs' -o json filter names the events" grep -qx path_down "$WORK/names.txt"
ip netns exec rtr nft delete table inet fault

# --- item 5: a bad file ---------------------------------------------------------------------
pid=$(main_pid)
printf 'mobike {\n    hold_down = 30s\n    probe_misses = many\n}\n' > /etc/swanctl/conf.d/mobike.conf
doc 'mobike-vici check-config' >"$WORK/check.out" 2>"$WORK/check.err"
rc=$?
check "check-config of a bad file: exit 2 (got $rc)" [ "$rc" = 2 ]
check "... FILE:LINE on stderr" grep -q '^/etc/swanctl/conf.d/mobike.conf:3: ' "$WORK/check.err"
doc 'systemctl reload mobike-vici' 2>"$WORK/reload.txt"
rc=$?
check "systemctl reload of a bad file fails (exit $rc)" [ "$rc" != 0 ]
check "... and the controller runs on, the same process" \
    bash -c "systemctl is-active -q mobike-vici && [ \"\$(systemctl show -p MainPID --value mobike-vici)\" = $pid ]"
check "... the FILE:LINE is in the unit's journal at priority err" \
    bash -c "journalctl -u mobike-vici -p err -o cat | grep -q '^/etc/swanctl/conf.d/mobike.conf:3: '"
systemctl reset-failed mobike-vici 2>/dev/null
systemctl restart mobike-vici >/dev/null 2>&1
sleep 8
check "a bad file at start: exit 2, failed, not restarted" bash -c \
    "[ \"\$(systemctl show -p ActiveState --value mobike-vici)\" = failed ] &&
     [ \"\$(systemctl show -p ExecMainStatus --value mobike-vici)\" = 2 ] &&
     [ \"\$(systemctl show -p NRestarts --value mobike-vici)\" = 0 ]"
printf 'mobike {\n    hold_down = 30s\n}\n' > /etc/swanctl/conf.d/mobike.conf
systemctl restart mobike-vici || fail "restart with the file fixed"

# --- items 4 and 7: the events drop-in and logrotate ---------------------------------------
doc 'mkdir -p /etc/systemd/system/mobike-vici.service.d'
doc 'install -m 644 systemd/mobike-vici.service.d/events.conf /etc/systemd/system/mobike-vici.service.d/'
doc 'systemctl daemon-reload'
t0=$(date +%s.%N)
doc 'systemctl restart mobike-vici' || fail "restart with events.conf"
python3 -c 'import sys, time; print(f"deploy: figure: restart without --metrics to READY:"
                                    f" {time.time() - float(sys.argv[1]):.2f} s")' "$t0"
EV=/var/log/mobike-vici/events.jsonl
check "the events go to $EV" wait_for 20 grep -q '"event": "ike_sa_tracked"' "$EV"
check "... mode 0600" [ "$(stat -c %a "$EV")" = 600 ]
check "... pure JSON lines" jq -e -s 'length > 0' "$EV"
doc 'install -m 644 contrib/logrotate.d/mobike-vici /etc/logrotate.d/mobike-vici'
# As if a week had passed since the last rotation, then logrotate as the timer runs it.
printf 'logrotate state -- version 2\n"%s" 2020-1-1-0:0:0\n' "$EV" >> /var/lib/logrotate/status
systemctl start logrotate.service || fail "logrotate.service"
check "logrotate.service rotated the events" test -s "$EV.1"
doc 'systemctl reload mobike-vici' >/dev/null || fail "reload"
check "... and the controller writes to the new file" wait_for 10 grep -q config_reloaded "$EV"
check "... not to the rotated one" bash -c "! grep -q config_reloaded $EV.1"

# --- item 6: metrics, and how long start takes with them ----------------------------------
rm /etc/systemd/system/mobike-vici.service.d/events.conf
doc 'install -m 644 systemd/mobike-vici.service.d/metrics.conf /etc/systemd/system/mobike-vici.service.d/'
doc 'systemctl daemon-reload'
t0=$(date +%s.%N)
doc 'systemctl restart mobike-vici' || fail "restart with metrics.conf"
python3 -c 'import sys, time; print(f"deploy: figure: restart with --metrics to READY:"
                                    f" {time.time() - float(sys.argv[1]):.2f} s")' "$t0"
doc_net 'curl -s http://127.0.0.1:9474/metrics' >"$WORK/metrics.txt" || fail "curl the metrics"
check "the metrics serve mobike_ike_sas" grep -q '^mobike_ike_sas{' "$WORK/metrics.txt"

systemctl stop mobike-vici strongswan gw-charon 2>/dev/null
for ns in mob rtr gw; do ip netns del "$ns" 2>/dev/null; done
rm -rf "$WORK"
finish
