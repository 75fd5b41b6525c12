"""Published configs of the real models behind the "full" presets (real architecture, random weights).

No machine here can reach the Hugging Face Hub, so the config files of the real repos are written out
below as plain constructor kwargs. Metadata-only keys (``_class_name``, ``_diffusers_version``,
``_name_or_path``, ``architectures``, ``transformers_version``, ``torch_dtype``) are dropped; everything
else is meant to be the published value.

The JSON files themselves could not be read from the Hub. Each dict was put together from
  * the conversion scripts that wrote those repos (huggingface/diffusers
    ``scripts/convert_sana_to_diffusers.py`` and ``scripts/convert_dcae_to_diffusers.py``, and NVlabs/Sana
    ``tools/convert_sana_to_diffusers.py``): these give the kwargs passed to the constructors.
    diffusers ``save_pretrained`` writes *every* ``__init__`` argument, so a published config is those
    kwargs plus the defaults of the diffusers version that saved it;
  * third-party code that inlines or pins the published files (cited at each dict).
Keys or values that no source confirms are marked UNVERIFIED. All UNVERIFIED items have no effect on the
architecture: the models built from these dicts have the published shapes and parameter counts.

Usage (meta device: nothing is allocated):

    with torch.device("meta"):
        transformer = SanaTransformer2DModel(**SANA_1600M_TRANSFORMER)
        vae = AutoencoderDC(**SANA_DCAE_VAE)
        text_encoder = Gemma2Model(Gemma2Config(**GEMMA2_2B_TEXT_ENCODER))
        nsfw = ViTForImageClassification(ViTConfig(**NSFW_CLASSIFIER))
    scheduler = DPMSolverMultistepScheduler(**SANA_SCHEDULER)
    sprint_scheduler = SCMScheduler(**SANA_SPRINT_SCHEDULER)

Parameter counts measured with diffusers 0.42.1 / transformers 5.23.0, meta device:
    SANA_1600M_TRANSFORMER         1,604,462,752
    SANA_SPRINT_1600M_TRANSFORMER  1,610,237,472  (+5,595,520 guidance embedder, +179,200 q/k RMSNorms)
    SANA_DCAE_VAE                    312,250,275  (encoder 153,027,104 / decoder 159,223,171)
    GEMMA2_2B_TEXT_ENCODER         2,614,341,888  (Gemma2Model; 589,824,000 of it is the embedding table)
    NSFW_CLASSIFIER                   85,800,194  (ViT-B/16, 2-way head)
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------
# 1. Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers : transformer/config.json
#    (SanaTransformer2DModel kwargs)
# Source: diffusers scripts/convert_sana_to_diffusers.py, model_type "SanaMS_1600M_P1_D20", image_size 1024
#   (70 heads x 32 = 2240 hidden, 20 layers, 20 cross-attn heads x 112, caption_channels 2304 = Gemma2-2B
#   hidden size, mlp_ratio 2.5, sample_size 1024 // 32 = 32, interpolation_scale None at 1024 px,
#   qk_norm only for SANA-1.5 / Sprint, so not here). NVlabs/Sana tools/convert_sana_to_diffusers.py
#   passes the same kwargs. A test file that inlines the real Sana 0.6B transformer/config.json
#   (the brodiffusion C++ test "test_sana_config") has the same key set, apart from interpolation_scale.
# UNVERIFIED: whether the published file has the "interpolation_scale": null key. It appeared in the
#   diffusers signature around the time this repo was converted (diffusers 0.32), and an absent key
#   means the same thing (default None: no positional embedding, as Sana 1.0 uses none).
# ---------------------------------------------------------------------------------------------------
SANA_1600M_TRANSFORMER: dict = {
    "attention_bias": False,
    "attention_head_dim": 32,
    "caption_channels": 2304,
    "cross_attention_dim": 2240,
    "cross_attention_head_dim": 112,
    "dropout": 0.0,
    "in_channels": 32,
    "interpolation_scale": None,  # UNVERIFIED: is the key in the published file? (see above)
    "mlp_ratio": 2.5,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "num_attention_heads": 70,
    "num_cross_attention_heads": 20,
    "num_layers": 20,
    "out_channels": 32,
    "patch_size": 1,
    "sample_size": 32,
}

# ---------------------------------------------------------------------------------------------------
# 2. Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers : transformer/config.json
#    (SanaTransformer2DModel kwargs)
# Source: diffusers scripts/convert_sana_to_diffusers.py, model_type "SanaSprint_1600M_P1_D20" (the
#   script the Sprint PR huggingface/diffusers#11074 used to make this repo): the same 1.6B
#   kwargs as above, plus qk_norm="rms_norm_across_heads" and guidance_embeds=True.
#   guidance_embeds_scale is the signature default, 0.1. It matches NVlabs/Sana's Sprint training config
#   (cfg_embed_scale: 0.1), and SanaSprintPipeline multiplies guidance by it.
# UNVERIFIED: "timestep_scale" is left out. It was added to the signature in diffusers#11150
#   (2025-03-25), just after this repo was converted. If the file has it, the value is the default 1.0,
#   which SanaSprintPipeline does not read. "interpolation_scale": null has the same uncertainty as in 1.
# ---------------------------------------------------------------------------------------------------
SANA_SPRINT_1600M_TRANSFORMER: dict = {
    "attention_bias": False,
    "attention_head_dim": 32,
    "caption_channels": 2304,
    "cross_attention_dim": 2240,
    "cross_attention_head_dim": 112,
    "dropout": 0.0,
    "guidance_embeds": True,
    "guidance_embeds_scale": 0.1,
    "in_channels": 32,
    "interpolation_scale": None,  # UNVERIFIED (see above)
    "mlp_ratio": 2.5,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "num_attention_heads": 70,
    "num_cross_attention_heads": 20,
    "num_layers": 20,
    "out_channels": 32,
    "patch_size": 1,
    "qk_norm": "rms_norm_across_heads",
    "sample_size": 32,
}

# ---------------------------------------------------------------------------------------------------
# 3a. Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers : scheduler/scheduler_config.json
#     (SCMScheduler kwargs)
# Source: diffusers scripts/convert_sana_to_diffusers.py (Sprint branch):
#   SCMScheduler(prediction_type="trigflow", sigma_data=0.5), saved with all
#   __init__ args (num_train_timesteps default 1000). Third-party Sprint runtimes read sigma_data 0.5 the
#   same way. max_timesteps=1.57080 and intermediate_timesteps=1.3 are
#   SanaSprintPipeline.__call__ arguments, not scheduler config.
# UNVERIFIED: an intermediate draft of that script also put "max_timesteps": 1.5708 and
#   "intermediate_timesteps": 1.3 into SCMScheduler. If the published file came from that draft, it would
#   carry those two keys as well; SCMScheduler ignores them either way.
# ---------------------------------------------------------------------------------------------------
SANA_SPRINT_SCHEDULER_CLASS: str = "SCMScheduler"
SANA_SPRINT_SCHEDULER: dict = {
    "num_train_timesteps": 1000,
    "prediction_type": "trigflow",
    "sigma_data": 0.5,
}

# ---------------------------------------------------------------------------------------------------
# 3b. Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers : scheduler/scheduler_config.json
#     (DPMSolverMultistepScheduler kwargs: Sana's "Flow-DPM-Solver")
# Source: diffusers scripts/convert_sana_to_diffusers.py (default --scheduler_type flow-dpm_solver):
#   DPMSolverMultistepScheduler(flow_shift=3.0 (1024 px; 6.0 only for 4K), use_flow_sigmas=True,
#   prediction_type="flow_prediction"), with the remaining args at their defaults. The same values are in
#   ratemem's pinned loader, which SHA-256-checks a real SANA 1.6B snapshot's scheduler_config.json
#   (a SANA 1.5-style repo, not this exact one), and in brodiffusion's Sana fixture, which notes that the
#   real file has "lambda_min_clipped": -Infinity.
# UNVERIFIED: the exact key set matches the diffusers 0.32 signature, the version this repo was
#   converted with. Newer diffusers also write "use_dynamic_shifting": false and
#   "time_shift_type": "exponential" (both defaults); they are not included here.
# ---------------------------------------------------------------------------------------------------
SANA_SCHEDULER_CLASS: str = "DPMSolverMultistepScheduler"
SANA_SCHEDULER: dict = {
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

# ---------------------------------------------------------------------------------------------------
# 4. Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers : vae/config.json
#    (AutoencoderDC kwargs; DC-AE f32c32, i.e. mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers)
# Source: diffusers scripts/convert_dcae_to_diffusers.py ("dc-ae-f32c32-sana-1.0": latent 32; 6 stages of
#   128/256/512/512/1024/1024 channels; 3x ResBlock then 3x EfficientViTBlock; encoder layers 2,2,2,3,3,3;
#   decoder layers 3,3,3,3,3,3; qkv multiscale 5 in the ViT stages; conv downsample, interpolate upsample;
#   rms_norm/silu decoder; scaling_factor 0.41407). Key set and spellings ("Conv", list-valued block
#   types, string-valued decoder_norm_types and decoder_act_fns) follow brodiffusion's inlined real Sana
#   vae/config.json and ratemem's pinned DC-AE config.
# UNVERIFIED: newer diffusers add encoder_out_shortcut / decoder_in_shortcut / decoder_conv_act_fn
#   (defaults True / True / "relu", which is the DC-AE 1.0 behaviour). The diffusers 0.32 file does not
#   have them, so they are left out here.
# ---------------------------------------------------------------------------------------------------
SANA_DCAE_VAE: dict = {
    "attention_head_dim": 32,
    "decoder_act_fns": "silu",
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_types": [
        "ResBlock",
        "ResBlock",
        "ResBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
    ],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "decoder_norm_types": "rms_norm",
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "downsample_block_type": "Conv",
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_block_types": [
        "ResBlock",
        "ResBlock",
        "ResBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
    ],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "in_channels": 3,
    "latent_channels": 32,
    "scaling_factor": 0.41407,
    "upsample_block_type": "interpolate",
}

# ---------------------------------------------------------------------------------------------------
# 5. Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers : text_encoder/config.json
#    (transformers.Gemma2Config kwargs; the repo stores Gemma2Model, the decoder of
#    Efficient-Large-Model/gemma-2-2b-it, a copy of google/gemma-2-2b-it)
# Sources: the conversion scripts load "Efficient-Large-Model/gemma-2-2b-it" with
#   AutoModelForCausalLM(...).get_decoder() and save it, so the config is google/gemma-2-2b-it's, with
#   architectures=["Gemma2Model"]. google/gemma-2-2b-it's config.json is inlined in a Rust test
#   ("gemma2_real_hf_config_parses"). brodiffusion's inlined Sana text_encoder/config.json confirms
#   architectures Gemma2Model, the dims, the soft-caps, hidden_act, query_pre_attn_scalar, sliding_window,
#   max_position_embeddings and vocab_size.
# UNVERIFIED: the keys brodiffusion's trimmed copy leaves out are taken from google/gemma-2-2b-it and
#   assumed unchanged by the re-save: attention_dropout, bos/eos/pad_token_id, cache_implementation,
#   hidden_activation, initializer_range, rope_theta, use_cache.
# ---------------------------------------------------------------------------------------------------
GEMMA2_2B_TEXT_ENCODER: dict = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": [1, 107],
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304,
    "initializer_range": 0.02,
    "intermediate_size": 9216,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "num_attention_heads": 8,
    "num_hidden_layers": 26,
    "num_key_value_heads": 4,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "use_cache": True,
    "vocab_size": 256000,
}

# ---------------------------------------------------------------------------------------------------
# 6a. Falconsai/nsfw_image_detection : config.json  (transformers.ViTConfig kwargs for
#     ViTForImageClassification)
# Sources: the model card says it is fine-tuned from google/vit-base-patch16-224-in21k (ViT-B/16, 224 px)
#   with two classes, "normal" and "nsfw". Several users' code prints id2label as {0: 'normal', 1: 'nsfw'}
#   (e.g. helldweller/nsfw_image_detection main.py). A model card in another repo gives 85.8M parameters,
#   which matches ViT-B/16 with a 2-way head (measured 85,800,194). The backbone fields
#   are those of google/vit-base-patch16-224-in21k (dropouts 0.0, gelu, 768/3072/12/12, eps 1e-12,
#   qkv_bias True). encoder_stride 16 is what transformers >= 4.2x writes for ViT.
# UNVERIFIED: no verbatim copy of this config.json was found. Also unconfirmed: label2id's value type
#   (the HF image-classification recipe writes strings "0"/"1"), "problem_type" (what Trainer writes for
#   single-label fine-tuning) and "encoder_stride". None of these changes the architecture.
# ---------------------------------------------------------------------------------------------------
NSFW_CLASSIFIER: dict = {
    "attention_probs_dropout_prob": 0.0,
    "encoder_stride": 16,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 768,
    "id2label": {"0": "normal", "1": "nsfw"},
    "image_size": 224,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "label2id": {"normal": "0", "nsfw": "1"},
    "layer_norm_eps": 1e-12,
    "model_type": "vit",
    "num_attention_heads": 12,
    "num_channels": 3,
    "num_hidden_layers": 12,
    "patch_size": 16,
    "problem_type": "single_label_classification",
    "qkv_bias": True,
}

# ---------------------------------------------------------------------------------------------------
# 6b. Falconsai/nsfw_image_detection : preprocessor_config.json (ViTImageProcessor settings)
# Sources: users load it with ViTImageProcessor.from_pretrained("Falconsai/nsfw_image_detection").
#   An ONNX port of this exact model (FalconsaiDetector, C#) hard-codes the same preprocessing: 224x224
#   bilinear ("Triangle") resize, then (x / 255 - 0.5) / 0.5, i.e. mean = std = 0.5 per channel.
#   That is also the preprocessing of the base model google/vit-base-patch16-224-in21k.
# UNVERIFIED: exact key set / "image_processor_type" spelling of the published file.
# ---------------------------------------------------------------------------------------------------
NSFW_PREPROCESSOR: dict = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,  # PIL bilinear
    "rescale_factor": 0.00392156862745098,  # 1 / 255
    "size": {"height": 224, "width": 224},
}
NSFW_IMAGE_SIZE: int = 224
