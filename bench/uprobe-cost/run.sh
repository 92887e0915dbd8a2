#!/usr/bin/env bash
# What one uprobe hit costs on this machine, by the instruction it is placed on and with or
# without a return probe (as root; needs gcc and tracefs). Uses tracefs uprobe events (the same
# uprobe core as the agent's BPF uprobes; the events are enabled but tracing is off, so nothing is
# recorded). Removes its events on exit.
set -euo pipefail
cd "$(dirname "$0")"
T=/sys/kernel/tracing
[ -e $T/uprobe_events ] || mount -t tracefs nodev $T
out=$(mktemp -d)
trap 'for e in sub_rsp push nop5 sub_rsp_ret push_ret; do echo "-:trapcost/$e" >> $T/uprobe_events 2>/dev/null || true; done; rm -rf "$out"' EXIT
gcc -O2 -o "$out/trap_cost" trap_cost.c
bin=$out/trap_cost
offset() { printf '0x%x' "0x$(nm "$bin" | awk -v f="$1" '$3==f{print $1}')"; }
for f in sub_rsp push nop5; do echo "p:trapcost/$f $bin:$(offset $f)" >> $T/uprobe_events; done
for f in sub_rsp push; do echo "r:trapcost/${f}_ret $bin:$(offset $f)" >> $T/uprobe_events; done
calls=${1:-20000}
for f in sub_rsp push nop5; do
  echo -n "no probe           "; "$bin" $f "$calls"
  echo 1 > $T/events/trapcost/$f/enable
  echo -n "entry probe        "; "$bin" $f "$calls"
  echo 0 > $T/events/trapcost/$f/enable
  if [ -e $T/events/trapcost/${f}_ret ]; then
    echo 1 > $T/events/trapcost/${f}_ret/enable
    echo -n "return probe       "; "$bin" $f "$calls"
    echo 0 > $T/events/trapcost/${f}_ret/enable
  fi
done
