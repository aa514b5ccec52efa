# The aggregated results (summary tables, DVC metrics), the figures of each data configuration
# and REPORT.md, the last step. Figures and tables are marked for `snakemake --report`.

# the published accuracy ranges both reports check each paper-scale set against (dyncim.report.sanity)
SANITY_RANGES = os.path.relpath(sanity.RANGES_FILE)


rule report:
    input:
        [eval_outputs(d) for d in DATASETS],
        ranges=SANITY_RANGES,
        code=code("report"),
    output:
        md=paths.SUMMARY["md"],
        csv=paths.SUMMARY["csv"],
        json=paths.SUMMARY["json"],
        sanity=paths.SUMMARY["sanity"],
        metrics=directory(paths.METRICS_DIR),
    log:
        paths.log_file("report"),
    params:
        job=job(dc.report_job),
    shell:
        "python -m dyncim report --job {params.job:q} --md {output.md} --csv {output.csv} --json {output.json} --sanity {output.sanity} --metrics {output.metrics} --quiet > {log} 2>&1"


rule figures:
    input:
        evals=lambda w: eval_outputs(w.data),
        # the curves and TensorBoard logs the figures read are written with these
        models=[paths.manifest("{data}", m) for m in METHODS],
        robustness=paths.robustness_file("{data}"),
        code=code("figures"),
    output:
        [
            report(
                paths.figure_file("{data}", kind),
                caption=f"../report/{kind}.rst",
                category="Figures",
                subcategory="{data}",
                labels={"data set": "{data}", "figure": kind},
            )
            for kind in FIGURE_KINDS
        ],
    log:
        paths.log_file("figures", "{data}"),
    params:
        job=job(dc.figures_job, "data"),
    shell:
        "python -m dyncim figures --job {params.job:q} --robustness {input.robustness} --out {output} > {log} 2>&1"


rule report_md:
    input:
        [eval_outputs(d) for d in DATASETS],
        robustness=[paths.robustness_file(d) for d in DATASETS],
        figures=[paths.figure_file(d, k) for d in DATASETS for k in FIGURE_KINDS],
        ranges=SANITY_RANGES,
        code=code("report_md"),
    output:
        md=report(paths.REPORT, caption="../report/report_md.rst", category="Report"),
        ranks=report(
            paths.RANKS_FIGURE,
            caption="../report/critical-difference.rst",
            category="Figures",
            labels={"figure": "critical difference"},
        ),
    log:
        paths.log_file("report_md"),
    params:
        job=job(dc.report_job),
    shell:
        "python -m dyncim report-md --job {params.job:q} --out {output.md} --ranks-figure {output.ranks} > {log} 2>&1"
