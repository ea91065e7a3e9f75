#!/usr/bin/env bash
# Reproduces every table in docs/results.md (2 CPU cores: two runs at a time, one thread each).
# Run from the repository root after `pip install -e .`. Finished runs are skipped on a re-run.
set -uo pipefail
OUT=${OUT:-runs/compare}
C="crrelu-lightning compare --parallel 2 --threads-per-run 1 --seeds 0,1,2"

crrelu-lightning data fetch fashion-mnist
crrelu-lightning data fetch shakespeare
crrelu-lightning data fetch sentiment

# 1. Fashion-MNIST ViT (configs/demo.yaml), 10 activations x 3 seeds, fixed budget of 430 optimizer steps (2 epochs).
$C --config configs/demo.yaml --out $OUT/fmnist --test --max-steps 430 --baseline gelu,relu \
   --activations gelu,relu,prelu,elu,celu,silu,mish,star_relu,crrelu,crgelu -- --trainer.max_epochs=-1

# 2. EAFO on the same budget: CRReLU + EAFOCallback in step and regularize modes (GELU and CRReLU rows come from 1).
$C --config configs/demo.yaml --config configs/demo_eafo.yaml --out $OUT/fmnist_eafo_step --test --max-steps 430 \
   --activations crrelu_eafo_step=crrelu -- --trainer.max_epochs=-1
$C --config configs/demo.yaml --config configs/demo_eafo_regularize.yaml --out $OUT/fmnist_eafo_reg --test --max-steps 430 \
   --activations crrelu_eafo_reg=crrelu -- --trainer.max_epochs=-1
# 2b. The EAFO rows beside the GELU and CRReLU rows of 1, with differences from CRReLU and from GELU.
crrelu-lightning compare --report-csv $OUT/fmnist/results.csv $OUT/fmnist_eafo_step/results.csv \
   $OUT/fmnist_eafo_reg/results.csv --activations gelu,crrelu,crrelu_eafo_step,crrelu_eafo_reg \
   --baseline crrelu,gelu --out $OUT/fmnist_eafo

# 3. Shakespeare character-level GPT, GELU vs CRReLU, 300 steps.
$C --config configs/language/shakespeare_char.yaml --out $OUT/shakespeare --max-steps 300 --baseline gelu \
   --activations gelu,crrelu -- --trainer.val_check_interval=150

# 4. Sentiment DPO from the GELU Shakespeare model (seed 0), keeping GELU or swapping in CRReLU (the paper's setting).
INIT=$OUT/shakespeare/runs/gelu/seed0/checkpoints/last.ckpt
$C --config configs/language/sentiment_dpo.yaml --out $OUT/sentiment_dpo --max-steps 60 \
   --baseline gelu --diff-metrics final_val/reward_margin,final_val/loss \
   --activations gelu,crrelu -- --model.init_from=$INIT --trainer.val_check_interval=30

# 4b. The same with a 200-step budget (validation every 50 steps).
$C --config configs/language/sentiment_dpo.yaml --out $OUT/sentiment_dpo_200 --max-steps 200 \
   --baseline gelu --diff-metrics final_val/reward_margin,final_val/loss \
   --activations gelu,crrelu -- --model.init_from=$INIT --trainer.val_check_interval=50

# 5. General EAFO (docs/results.md §9): the GELU and SiLU families and the ReLU pair at the demo budget
#    (1,712 steps); dynamic rows add the re-derivation overlay. Then the combined summaries and the figure.
D="--config configs/demo_eafo_derive.yaml"
$C --config configs/demo.yaml --test --activations gelu,crgelu,eafo_gelu --baseline gelu --out $OUT/i15/gelu
$C --config configs/demo.yaml $D --test --activations gelu_dyn=eafo_gelu --out $OUT/i15/dyn
$C --config configs/demo.yaml --test --activations silu,crsilu,eafo_silu --baseline silu --out $OUT/i15/silu
$C --config configs/demo.yaml $D --test --activations silu_dyn=eafo_silu --out $OUT/i15/dyn_silu
$C --config configs/demo.yaml --test --activations crrelu,eafo_relu --baseline crrelu --out $OUT/i15/relu
crrelu-lightning compare --report-csv $OUT/i15/gelu/results.csv $OUT/i15/dyn/results.csv --baseline gelu --out $OUT/i15/gelu_all
crrelu-lightning compare --report-csv $OUT/i15/silu/results.csv $OUT/i15/dyn_silu/results.csv --baseline silu --out $OUT/i15/silu_all
python scripts/geafo_figure.py $OUT/i15/gelu $OUT/i15/dyn $OUT/i15/silu $OUT/i15/dyn_silu $OUT/i15/relu \
  --row "GELU=gelu,crgelu,eafo_gelu,gelu_dyn" --row "SiLU=silu,crsilu,eafo_silu,silu_dyn" \
  --row "ReLU pair=crrelu,eafo_relu" --out $OUT/i15/geafo_entropy_accuracy.png
