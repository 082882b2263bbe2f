"""make bench on a tiny scale: both loops run, every figure is reported, the last line is parseable."""

import re

import pytest

from normlab.bench import ratios as bench
from normlab.config import compose


@pytest.mark.slow
def test_bench_reports_every_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "SUBSETS", {256: 512, 8: 64})
    # Each fit is tested on 1,000 test images, not 10,000: the bench times training passes only.
    monkeypatch.setattr(
        bench, "compose_config", lambda overrides: compose([*overrides, "data.test_subset=1000"])
    )
    monkeypatch.setattr(bench, "NORMS", ("scratch", "native"))  # the two the scratch-vs-native line needs
    monkeypatch.setattr(
        bench, "ghost_step_ratios", lambda repeats: [bench.step_seconds("ghost", [], 16, 5) / 0.01]
    )
    monkeypatch.setattr(bench, "FUSED_SUBSETS", {2: 64, 256: 512})
    monkeypatch.setattr(bench, "FUSED_KINDS", ("native",))  # 1 kind x 2 seeds: a group, one fit alone
    monkeypatch.setattr(bench, "FUSED_SEEDS", 2)
    monkeypatch.setattr(bench, "AUTO_LINE_BATCHES", (2, 256))
    monkeypatch.setattr(bench, "ONE_KIND_SEEDS", 2)
    lines: list[str] = []
    results = bench.run(epochs=2, repeats=1, sweep=False, say=lines.append)
    for batch in (256, 8):
        for norm in bench.NORMS:
            assert results[f"bs{batch}/{norm}/platform"] > 0 and results[f"bs{batch}/{norm}/reference"] > 0
            assert 0 < results[f"bs{batch}/{norm}/logging"] < 1
        assert results[f"bs{batch}/scratch_vs_native"] > 0
    assert re.fullmatch(r"speed ratio vs reference: bs256=\d+\.\d\d bs8=\d+\.\d\d", bench.ratio_line(results))
    assert re.fullmatch(
        r"fused speed-up: bs2=\d+\.\d\d bs256=1\.00", bench.final_line(results)
    )  # auto: 256 alone
    assert any(line.startswith(("other work while the bench ran", "load average (1 min)")) for line in lines)
    assert any("scratch BN time per step" in line for line in lines)
    assert results["ghost_vs_native"] > 0 and any("ghost BN (virtual batch 2)" in line for line in lines)
    assert results["fused_bs2"] > 0 and results["fused_bs256"] > 0 and results["fused_bs2_one_kind"] > 0
    assert any(
        re.search(r"2 cells of one kind \(native x 2 seeds\) fused: \d+\.\d\d", line) for line in lines
    )
    assert any(
        re.search(r"fused: \d+\.\d\d \[.*\] x the samples/s .* fuse=auto fuses here", line) for line in lines
    )
