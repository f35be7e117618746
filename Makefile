# Two entry points: `make demo` (the main job on the embedded default model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,bench,ui,cluster]"
	touch $@

.PHONY: install demo test bench
install: $(VENV)/.installed

demo: install
	$(VENV)/bin/advquery demo

test: install
	$(PY) -m pytest -q --durations=15

bench: install
	cd bench && ../$(PY) baseline_retrieval.py \
		&& ../$(PY) protect_pire.py --size 512 --settings ssim-pire:low --name protect_pire_512_ssim_pire \
		&& ../$(PY) protect_pire.py --size 1024 --limit 10 --settings ssim-pire:low+jpeg ssim-pire:medium \
		--name protect_pire_1024_limit10_ssim_pire \
		&& ../$(PY) robustness.py --size 512 --limit 10 --method ssim-pire --name robustness_512_ssim_pire --transfer-limit 0 \
		&& ../$(PY) protect_pire.py --size 512 --settings low medium paper-T30 \
		&& ../$(PY) protect_pire.py --size 512 --limit 5 --settings high paper-T200,500 low medium paper-T30 \
		&& ../$(PY) protect_pire.py --size 1024 --limit 10 --settings low low+jpeg low+coarse2 low+jpeg+coarse2 medium+coarse1 \
		&& ../$(PY) protect_pire.py --size 1024 --limit 10 --settings medium+coarse2 --name protect_pire_1024_limit10_coarse \
		&& ../$(PY) protect_pire.py --size 1024 --limit 10 --settings low+jpeg+steps60 --name protect_pire_1024_limit10_steps60 \
		&& ../$(PY) perceptual_map_speed.py && ../$(PY) robustness.py --size 512 --limit 10 --transfer-limit 10 \
		--presets low medium high && ../$(PY) robustness.py --size 1024 --limit 10 --presets medium --parts edits \
		&& ../$(PY) other_systems.py \
		&& ../$(PY) perceptual_methods.py --limit 6 --steps 40 --name perceptual_methods_limit6 \
		&& ../$(PY) perceptual_methods.py --limit 20 --steps 40 --parts curves --curve-budgets \
		ssim-pire=60,150,300,600,1200 pire=1,2 cv-pire=20,10 sd-pire=20,10 masked-pire=0.5 \
		--name perceptual_methods_limit20_operating_point \
		&& ../$(PY) trackers.py --split validation --quick --calibrate --limit 8 --no-handcrafted \
		&& ../$(PY) trackers.py --split test --quick --limit 5 --no-handcrafted \
		&& ../$(PY) flat_regions.py && ../$(PY) readme_figure.py \
		&& ../$(PY) speed.py --parts time --photos 1 \
		&& ../$(PY) scale.py --n 1000000 --nlist 1024 --nprobe 8 32 128 \
		&& ../$(PY) cluster_throughput.py \
		&& ../$(PY) readme_tables.py
