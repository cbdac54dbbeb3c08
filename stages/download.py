"""DVC stage `download`: fetch the configured data source (checksummed) into the raw data directory."""

from imgclf import stage_runner
from imgclf.data import archives, fingerprint, sources

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "data.source", "data.path", "data.sha256", "data.synthetic_classes", "data.synthetic_per_class",
          "data.synthetic_image_size", "data.max_extracted_mb", "data.max_expansion_ratio",
          "data.max_archive_members")


def main() -> None:
    def body(params, args):
        data = params.data
        local = fingerprint.local_data_path(data.source, data.path)
        # A relative data.path is the user's project's, also in a queued experiment's temporary copy.
        path = str(fingerprint.checked_local_path(local, project=stage_runner.project_root())) if local else data.path
        sources.fetch_source(source=data.source, path=path, sha256=data.sha256, raw_dir=args.out,
                             download_dir=args.download_dir, seed=params.seed,
                             synthetic_classes=data.synthetic_classes,
                             synthetic_per_class=data.synthetic_per_class,
                             synthetic_image_size=data.synthetic_image_size,
                             limits=archives.ExtractionLimits(max_extracted_mb=data.max_extracted_mb,
                                                              max_expansion_ratio=data.max_expansion_ratio,
                                                              max_members=data.max_archive_members))

    stage_runner.stage(__doc__, PARAMS, {"out": "raw data directory to write",
                                         "download_dir": "where downloaded archives are kept between runs"}, body)


if __name__ == "__main__":
    main()
