# served A/B: spin_rows=2 (new, 6473ae2) against never spinning (old, 478425f), alternating
for rep in 1 2 3; do
for side in new old; do
  [ $rep = 2 ] && side=$([ $side = new ] && echo old || echo new)
  tree=/tmp/$side
  out=/tmp/ab3/${side}_r$rep; rm -rf $out
  (cd $tree && .venv/bin/python -m benchmarks.bench --engine /work/main/build/engines/default-d5572f97ed --modes ar self_spec_b4 auto --concurrency 1 4 16 --out $out > $out.log 2>&1)
  grep "^\[" $out.log | sed "s/^/$side rep $rep /"
done; done
