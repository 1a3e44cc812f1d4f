# The README's two commands. Each builds .venv from nothing when it is missing or pyproject.toml or
# constraints.txt (the exact torch and torchvision) changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

# The main job on the bundled demo set: generate it, decode it once (alexnet prepare), train the paper
# network with the demo preset (it fails if val top-1 ends below 90%), evaluate with the paper's 10
# views, name a few val images, and draw the five pictures of `alexnet viz` into the run folder.
# A demo set rewritten by a newer generator makes its decoded copy stale: that copy is decoded afresh.
# The score maps are drawn at scale 288: the demo network knows one scale (256; dense top-1 90% at 288,
# 78% at 320), and 288 still gives two rows of positions.
DEMO_DATA := data/demo
DEMO_PREP := data/demo-prepared
DEMO_RUN  := runs/demo

demo: $(STAMP)
	$(BIN)/alexnet demo-data --out $(DEMO_DATA)
	test $(DEMO_DATA)/.complete -ot $(DEMO_PREP)/alexnet-prepared.json || rm -rf $(DEMO_PREP)
	$(BIN)/alexnet prepare --data $(DEMO_DATA) --out $(DEMO_PREP)
	rm -rf $(DEMO_RUN)
	$(BIN)/alexnet train --preset demo --data $(DEMO_PREP) --out $(DEMO_RUN) --require-top1 0.9
	$(BIN)/alexnet evaluate --checkpoint $(DEMO_RUN)/best.pt --data $(DEMO_PREP) --views 10
	$(BIN)/alexnet predict --checkpoint $(DEMO_RUN)/best.pt --topk 3 \
		$(DEMO_DATA)/val/checker/checker_0000.jpg $(DEMO_DATA)/val/rings/rings_0000.jpg \
		$(DEMO_DATA)/val/rays/rays_0000.jpg
	$(BIN)/alexnet viz curves --run $(DEMO_RUN)
	$(BIN)/alexnet viz filters --checkpoint $(DEMO_RUN)/best.pt
	$(BIN)/alexnet viz predictions --checkpoint $(DEMO_RUN)/best.pt $(DEMO_DATA)/val/*/*_0000.jpg
	$(BIN)/alexnet viz scoremap --checkpoint $(DEMO_RUN)/best.pt --scale 288 $(DEMO_DATA)/val/*/*_0000.jpg
	$(BIN)/alexnet viz neighbors --checkpoint $(DEMO_RUN)/best.pt --data $(DEMO_PREP)
	@echo "demo set: $(DEMO_DATA)  run: $(DEMO_RUN) (config.yaml, metrics.jsonl, best.pt, last.pt)"
	@echo "pictures: $(DEMO_RUN)/curves.png $(DEMO_RUN)/filters.png $(DEMO_RUN)/predictions.png $(DEMO_RUN)/neighbors.png \
	$(DEMO_RUN)/scoremap.png"

# The tests in two rounds: those that run in one process spread over the cores (pytest-xdist, a file per
# worker, so module fixtures are made once), then those whose processes compute together (the `processes`
# mark: torchrun, DDP, towers), one at a time with every core and all the memory. Both rounds always run.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not processes"; one=$$?; \
	$(BIN)/python -m pytest -m processes; together=$$?; \
	test $$one -eq 0 && test $$together -eq 0

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
