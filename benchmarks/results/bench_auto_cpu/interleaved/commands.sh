cd .
for rep in 1 2 3; do for c in 1 16; do
  rm -rf build/inter/r${rep}_c$c
  .venv/bin/python -m benchmarks.bench --url 127.0.0.1:8001 --modes ar auto self_spec_b4 --concurrency $c --out build/inter/r${rep}_c$c > build/inter/r${rep}_c$c.log 2>&1
  grep "^\[" build/inter/r${rep}_c$c.log | sed "s/^/rep $rep /"
done; done
