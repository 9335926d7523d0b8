"""danesync's benchmarks: `python -m bench [--quick]` (run by `make bench`).

Each benchmark measures danesync beside a baseline in the same run, on real
programs started on loopback (Postfix, and Pebble + certbot for real
renewals), and the figures go to bench/results/latest.{json,md}.

- `latency`: renewal-to-served time (DNS off) against a certbot deploy hook
  that runs `postfix reload`;
- `idle`: CPU and memory of an idle `danesync run` with 50 lineages against
  an idle interpreter;
- `scale`: time to READY=1 and to serve one renewal with 1,000 lineages
  against the same with one.
"""
