for rep in 1 2 3; do
for side in new old; do
  tree=/work/main; [ $side = old ] && tree=/tmp/old
  out=/tmp/ab_spin2/${side}_r$rep; rm -rf $out
  (cd $tree && .venv/bin/python -m benchmarks.bench --engine /work/main/build/engines/default-d5572f97ed --modes ar self_spec_b4 --concurrency 1 16 --out $out > $out.log 2>&1)
  grep "^\[" $out.log | sed "s/^/$side rep $rep /"
done; done
