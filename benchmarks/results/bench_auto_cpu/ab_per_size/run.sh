#!/bin/bash
# auto before (17f411f, /tmp/wt_old) and after (this commit range, /work/main), alternating,
# the same engine build and cost table
E=/work/main/build/engines/default-d5572f97ed
D=benchmarks/results/bench_auto_cpu/ab_per_size
for round in 1 2; do
  for side in before after; do
    dir=/work/main; [ $side = before ] && dir=/tmp/wt_old
    (cd $dir && .venv/bin/python -m benchmarks.bench --model models/default --engine $E \
      --concurrency 1 4 8 16 --modes ar auto self_spec_b4 self_spec \
      --out /work/main/$D/${side}_$round 2>&1 | grep "^\[" | sed "s/^/$side $round /")
  done
done
echo DONE
