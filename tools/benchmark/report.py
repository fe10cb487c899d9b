"""The benchmark's report: benchmark.json's measurements as a markdown table.

One row a comparison (A, B, A / B and its target), then each configuration's peak RSS
alone in its own process, the large-dataset runs, and notes on what missed a target
and why.
"""

from tools.benchmark.large_dataset import LARGE_IMAGE_SIZE, LARGE_SIZE


def _ms(seconds):
    return f"{1000 * seconds:.1f} ms"


def _rate(s):
    return f"{_ms(s['median_s'])} ({s['images_per_s']:,.0f} img/s)"


def _verdict(ratio, target, at_most):
    ok = ratio <= target if at_most else ratio >= target
    return f"{'≤' if at_most else '≥'} {target:g}: {'ok' if ok else 'MISSED'}"


def _ratios(r):
    return f"{r['ratio']:.3f} (pairs {r['median_paired_ratio']:.3f})"


def format_markdown(report):
    settings = report["settings"]
    lines = [f"# Benchmark: {report['environment']['device']}, batch {settings['batch_size']}",
             "", "Step times are medians after warm-up; A / B below 1 means A is faster. "
             "A / B: ratio of the medians (median of the interleaved pairs' ratios).", "",
             "| model | comparison | A | B | A / B | target |",
             "|---|---|---|---|---|---|"]
    memory = ["", "| model | configuration, alone in its own process | peak RSS | "
                  "baseline RSS | median step (not interleaved) |", "|---|---|---:|---:|---:|"]
    for name, r in report["models"].items():
        label = f"{name} ({r['image_size']} px)"
        for key, how in (("masked_vs_dense", "no XLA"), ("masked_vs_dense_xla", "XLA")):
            md = r[key]
            lines.append(f"| {label} | masked / dense, Trainer step ({how}), "
                         f"{md['masked']['calls']} interleaved steps | {_rate(md['masked'])} | "
                         f"{_rate(md['dense'])} | {_ratios(md)} | "
                         f"{_verdict(md['ratio'], md['target'], True)} |")
        el = r["epoch_loop_vs_per_step_sync"]
        lines.append(f"| {label} | epoch loop ({el['steps_per_execution']} steps a call, one "
                     f"read an epoch) / per-step-sync loop, {el['epoch_loop']['calls']} "
                     f"interleaved epochs of {el['steps_per_epoch']} steps | "
                     f"{_rate(el['epoch_loop'])} | {_rate(el['per_step_sync'])} | "
                     f"{_ratios(el)} | |")
        cf = r["custom_vs_fit"]
        lines.append(f"| {label} | custom loop / model.fit (jit_compile=False), step time in "
                     f"{cf['custom']['epochs']} interleaved epochs of {cf['steps_per_epoch']} "
                     f"steps | {_rate(cf['custom'])} | {_rate(cf['fit'])} | {cf['ratio']:.3f} | |")
        lines.append(f"| {label} | … whole epochs, set-up included (overhead per epoch: "
                     f"{_ms(cf['custom']['per_epoch_overhead_s'])} vs "
                     f"{_ms(cf['fit']['per_epoch_overhead_s'])}) | {_ms(cf['custom']['epoch_s'])} "
                     f"| {_ms(cf['fit']['epoch_s'])} | {cf['epoch_ratio']:.3f} | |")
        pt = r["pipeline_vs_training"]
        lines.append(f"| {label} | input pipeline alone / training step consumption, "
                     f"{pt['pipeline']['calls']} epochs of {pt['pipeline']['images_per_epoch']:,} "
                     f"images, each followed by 8 steps | "
                     f"{pt['pipeline']['images_per_s']:,.0f} img/s | "
                     f"{pt['training_images_per_s']:,.0f} img/s | {pt['ratio']:.2f} | "
                     f"{_verdict(pt['ratio'], pt['target'], False)} |")
        mirrored = r.get("mirrored")
        if mirrored:
            one, two = mirrored["devices_1"], mirrored["devices_2"]
            lines.append(f"| {label} | MirroredStrategy 2 / 1 logical CPU devices, masked "
                         f"step (separate processes, not interleaved) | {_rate(two)} | "
                         f"{_rate(one)} | {mirrored['ratio']:.3f} | |")
        for key, w in (r.get("isolated") or {}).items():
            step = (_ms(w["median_s"]) + (" / epoch" if key.startswith("input") else ""))
            if w.get("gpu_peak_mib"):
                step += f" (GPU peak {w['gpu_peak_mib']:,.0f} MiB)"
            memory.append(f"| {label} | {key} | {w['peak_rss_mib']:,.0f} MiB | "
                          f"{w['baseline_rss_mib']:,.0f} MiB | {step} |")
    e = report.get("engines")
    if e and "skipped" not in e:
        lines.append(f"| {e['model']} ({e['image_size']} px) | JAX engine / TF engine on CPU, "
                     f"epoch loop step (Trainer.loop.train_epoch, input included, a process "
                     f"each), {e['jax']['calls']} interleaved epochs of {e['steps_per_epoch']} "
                     f"steps | {_rate(e['jax'])} | {_rate(e['tensorflow'])} | {_ratios(e)} | |")
    memory.append(f"| all | the main process (all in-process comparisons above) | "
                  f"{report['main_process_peak_rss_mib']:,.0f} MiB | | |")
    large = report.get("large_dataset")
    if large:
        first = next(iter(large["runs"].values()))
        memory += ["", f"Large dataset: ResNet-20 at {LARGE_IMAGE_SIZE} px on "
                       f"{large['images']:,} images of {LARGE_SIZE} px "
                       f"({first['dataset_bytes'] / 2**30:.2f} GiB decoded), MirroredStrategy "
                       f"over {first['replicas']} logical CPU devices, a process each.", "",
                   "| run | load | time to the first step | step | peak RSS | anonymous / "
                   "file-backed RSS at the end |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in large["runs"].items():
            memory.append(f"| {name} | {r['load_s']:.1f} s | {r['time_to_first_step_s']:.1f} s "
                          f"| {_ms(r['step_s'])} ({r['steps']} steps) | "
                          f"{r['peak_rss_mib']:,.0f} MiB | {r['rss_anon_mib']:,.0f} / "
                          f"{r['rss_file_mib']:,.0f} MiB |")
    notes = [""]
    for name, r in report["models"].items():
        md, xla = r["masked_vs_dense"], r.get("masked_vs_dense_xla")
        if md["ratio"] > md["target"]:
            extra_ms = 1000 * (md["masked"]["median_s"] - md["dense"]["median_s"])
            with_xla = (f", {xla['ratio']:.3f} with XLA" if xla else "")
            notes.append(
                f"{name}: masked / dense {md['ratio']:.3f} without XLA{with_xla}, against "
                f"{md['target']:g}. The masked step multiplies the gradients of "
                f"{md['masked_weights']:,} kernel weights by their masks, a memory-bound "
                f"pass (+{extra_ms:.2f} ms a step without XLA here) that shows where a step "
                "is this short.")
    if e and "skipped" in e:
        notes += ["", f"JAX engine / TF engine: skipped ({e['skipped']})."]
    notes += ["", "Baseline RSS: the worker process after importing TensorFlow and building "
             "the data, before any model. model.fit: Keras' jit_compile='auto' resolves to "
             f"{report['keras_auto_jit_compile']} here, so fit and the custom loop both run "
             "without XLA. On a shared machine absolute times drift; compare the ratios."]
    return "\n".join(lines + memory + notes) + "\n"
