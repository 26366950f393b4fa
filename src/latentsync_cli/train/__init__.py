"""Training the proxy model (`--weights proxy`), run by scripts/train_proxy.py. Never imported by the product.

    data.py      the demo clips -> aligned faces and their own speech's audio features, train / held-out split
    loop.py      resumable, deterministic training in chunks of steps (checkpoint, log, pid file)
    vae.py       the small VAE: reconstruction + KL; then its latent space rescaled and the latents cached
    syncnet.py   a small SyncNet on the latents, for the stage-2 objective's optional SyncNet loss
    unet.py      LatentSync's stage-2 objective on the tiny UNet
    evaluate.py  "is it a model?": mouth PSNR / SSIM on held-out frames, against the baselines
    export.py    the fp16 files that ship in latentsync_cli/weights/proxy_weights/
    curves.py    the loss curves of a run, as a PNG
"""
