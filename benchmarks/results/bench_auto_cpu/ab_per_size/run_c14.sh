#!/bin/bash
# auto before (17f411f, /tmp/wt_old) and after (/work/main), alternating servers, c=1 and 4,
# auto between the fixed settings in each server
E=/work/main/build/engines/default-d5572f97ed
D=benchmarks/results/bench_auto_cpu/ab_per_size
for round in 1 2 3; do
  for side in before after; do
    dir=/work/main; [ $side = before ] && dir=/tmp/wt_old
    (cd $dir && .venv/bin/python -m benchmarks.bench --model models/default --engine $E \
      --concurrency 1 4 --modes self_spec_b4 auto self_spec auto \
      --out /tmp/ab_c14/${side}_$round  # (printed lines only: ab_c14.log) 2>&1 | grep "^\[" | sed "s/^/$side $round /")
  done
done
echo DONE
