# served A/B: rounds fork where the cost model says it pays (new) against every round forking (old, 37e076f), alternating
for rep in 1 2 3; do
for side in new old; do
  [ $rep = 2 ] && side=$([ $side = new ] && echo old || echo new)
  out=/tmp/ab3/rule_${side}_r$rep; rm -rf $out
  (cd /tmp/$side && .venv/bin/python -m benchmarks.bench --engine /work/main/build/engines/default-d5572f97ed --modes ar self_spec_b4 auto --concurrency 1 4 16 --out $out > $out.log 2>&1)
  grep "^\[" $out.log | sed "s/^/$side rep $rep /"
done; done
