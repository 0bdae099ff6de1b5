"""Device side: numpy processing, runtime sessions, the Predictor, segment-everything,
the judge, artifacts and manifests, the backend registry. Never imports torch, cv2 or PIL
(import-linter contracts in `.importlinter`)."""
