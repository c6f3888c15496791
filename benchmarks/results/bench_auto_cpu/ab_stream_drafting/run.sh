#!/bin/bash
# auto before (1d5e1fc, /work/wt_sweep) and after (f405273, /work/main), alternating, the same engine
E=/work/main/build/engines/default-d5572f97ed
for round in 1 2; do
  for side in before after; do
    dir=/work/main; [ $side = before ] && dir=/work/wt_sweep
    (cd $dir && .venv/bin/python -m benchmarks.bench --model models/default --engine $E \
      --concurrency 1 4 8 16 --modes ar auto self_spec_b4 self_spec \
      --out benchmarks/results/bench_auto_cpu/ab_stream_drafting/${side}_$round 2>&1 | grep "^\[" | sed "s/^/$side $round /")
  done
done
echo DONE
