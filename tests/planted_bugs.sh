#!/usr/bin/env bash
# Plant the one-line bugs of issue 17 one at a time, run the behavioural test that must
# catch each, and put the source back. Not part of `cargo test`: run it by hand from a
# clean checkout (it refuses a dirty tree, and restores every planted file with
# `git checkout`, also when interrupted). Kernel halves run when the kernel gate allows.
#
#   tests/planted_bugs.sh            # every plant
#   tests/planted_bugs.sh c d        # some
#
# Exit status 0 when every plant was caught (its test failed) and the tree is clean again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
	echo "planted_bugs: the tree has changes; commit or stash them first" >&2
	exit 2
fi

planted=()
restore() {
	for f in "${planted[@]}"; do git checkout -q -- "$f"; done
	planted=()
}
trap restore EXIT INT TERM

# plant ID FILE OLD NEW TEST FILTER: replace the one occurrence of OLD by NEW in FILE, run
# `cargo test --test TEST FILTER`, expect it to fail.
plant() {
	local id=$1 file=$2 old=$3 new=$4 test=$5 filter=$6
	python3 - "$file" "$old" "$new" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"{path}: expected exactly one `{old}`, found {text.count(old)}")
open(path, "w").write(text.replace(old, new))
EOF
	planted+=("$file")
	if cargo test -q --test "$test" -- "$filter" >"/tmp/planted-$id.log" 2>&1; then
		echo "($id) NOT CAUGHT by $test $filter (log /tmp/planted-$id.log)"
		restore
		return 1
	fi
	if ! grep -q "test result: FAILED" "/tmp/planted-$id.log"; then
		echo "($id) BROKEN PLANT: $test did not run (log /tmp/planted-$id.log)"
		restore
		return 1
	fi
	echo "($id) caught by $test $filter"
	restore
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(a b c d e1 e2 f g)
missed=0
for id in "${want[@]}"; do
	case $id in
	a) plant a src/node/endpoints.rs 'v6.put(&ipc_v6_key(a, l),' 'v6.put(&ipc_v6_key(a, 128),' \
		policy_paths ipv6_cidr_rules || missed=1 ;;
	b) plant b src/codegen/endpoint.rs $'let found = l("policy_found");\n        for pass in 0..2 {' \
		$'let found = l("policy_found");\n        for pass in 0..1 {' \
		policy_paths overflowing_policy_slots || missed=1 ;;
	c) plant c src/maps/prefilter.rs '&(m as u32).to_le_bytes()' '&((m >> 32) as u32).to_le_bytes()' \
		prefilter_paths inline_prefixes || missed=1 ;;
	d) plant d src/codegen/prefilter.rs 'alu32(AluOp::Mul, Reg::R1, mul as i32)' \
		'alu32(AluOp::Mul, Reg::R1, V6_HASH_MUL[0] as i32)' prefilter_paths second_cuckoo_bucket || missed=1 ;;
	e1) plant e1 src/codegen/lb.rs $'    b.jmp(JmpCond::Ge, Reg::R1, Reg::R7, p("hash"));\n' '' \
		lb_expiry client_ip_affinity || missed=1 ;;
	e2) plant e2 src/codegen/lb.rs $'    b.alu(AluOp::Mul, Reg::R7, 1_000_000_000);\n' '' \
		lb_expiry client_ip_affinity || missed=1 ;;
	f) plant f src/model/cnp.rs '&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp][..]' '&[Protocol::Tcp][..]' \
		policy_paths a_port_without_a_protocol || missed=1 ;;
	g) plant g src/codegen/endpoint.rs 'alu32(AluOp::Mul, Reg::R1, mul as i32)' \
		'alu32(AluOp::Mul, Reg::R1, V6_HASH_MUL[0] as i32)' policy_paths policy_slots_in_their_second || missed=1 ;;
	*) echo "unknown plant $id" >&2; missed=1 ;;
	esac
done
git diff --quiet || { echo "planted_bugs: the tree is not clean after restoring" >&2; exit 2; }
exit $missed
