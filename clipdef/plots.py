"""The figures chapters share (seaborn; one idea per figure; labelled axes)."""

from __future__ import annotations

import numpy as np


def use_style() -> None:
    """The book's plotting style; an explicit call, never an import side effect."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def image_grid(images, titles=None, ncols: int = 8, scale: float = 1.4, suptitle: str | None = None):
    """Show float images (N, 3, H, W) in [0, 1] (or uint8 (N, H, W, 3)) as a grid with optional titles."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 3:
        images = images.transpose(0, 2, 3, 1)
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * (1.25 if titles else 1)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:n]):
        ax.imshow(np.clip(images[i], 0, 1) if images.dtype != np.uint8 else images[i], interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7, wrap=True)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def embedding_scatter(embeddings, labels, label_names=None, title: str = "", method: str = "pca", ax=None,
                      seed: int = 0):
    """2-D projection (PCA or t-SNE) of embeddings coloured by label."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    x = np.asarray(embeddings, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(x)
    else:
        raise ValueError(f"unknown projection {method!r}; valid: 'pca', 'tsne'")
    names = [label_names[i] for i in labels] if label_names is not None else labels
    frame = pd.DataFrame({"dim 1": xy[:, 0], "dim 2": xy[:, 1], "label": names})
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5.5))
    sns.scatterplot(frame, x="dim 1", y="dim 2", hue="label", s=12, linewidth=0, ax=ax, legend="brief")
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7, ncol=1, markerscale=1.2)
    ax.set_title(title or f"{method.upper()} of the embeddings")
    return ax


def trigger_gallery(images, triggers: dict, n: int = 4, amplify: float = 4.0):
    """Each trigger (row) on the same ``n`` images, with the amplified absolute difference |x' − x| beside them."""
    import matplotlib.pyplot as plt

    images = images[:n]
    fig, axes = plt.subplots(len(triggers) + 1, 2 * n, figsize=(2 * n * 1.05, (len(triggers) + 1) * 1.15),
                             squeeze=False)
    rows = [("clean", images, None)] + [(name, t.apply(images), t) for name, t in triggers.items()]
    for r, (name, out, _) in enumerate(rows):
        diff = ((out - images).abs() * amplify).clamp(0, 1)
        for c in range(n):
            axes[r, c].imshow(out[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r, n + c].imshow(diff[c].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title("triggered images", loc="left", fontsize=9)
    axes[0, n].set_title(f"|difference| × {amplify:g}", loc="left", fontsize=9)
    fig.tight_layout(pad=0.2)
    return fig


def strength_explorer(images, strengths: dict[str, list[float]], seed: int = 0):
    """Trigger × strength: an ipywidgets explorer in a live notebook; a static grid elsewhere (book, papermill)."""
    import matplotlib.pyplot as plt

    from clipdef import attacks
    from clipdef.env import in_notebook_frontend

    def show(name: str, value: float):
        t = attacks.get(name, seed=seed, **{attacks.STRENGTH_PARAMS[name]: value})
        return image_grid(t.apply(images[:6]), ncols=6, scale=1.5,
                          suptitle=f"{name}, {attacks.STRENGTH_PARAMS[name]} = {value:g}")

    names, columns = list(strengths), max(len(v) for v in strengths.values())
    if in_notebook_frontend():
        try:
            import ipywidgets as widgets

            # the slider walks each trigger's own list of strengths (their scales differ: WaNet's s vs a blend ratio)
            def pick(name: str, level: int):
                values = strengths[name]
                return show(name, values[min(level, len(values) - 1)]) and plt.show()

            return widgets.interact(pick, name=widgets.Dropdown(options=names, description="trigger"),
                                    level=widgets.IntSlider(min=0, max=columns - 1, value=columns // 2,
                                                            description="strength"))
        except ImportError:
            pass
    fig, axes = plt.subplots(len(names), columns, figsize=(columns * 1.6, len(names) * 1.7), squeeze=False)
    for r, name in enumerate(names):
        param = attacks.STRENGTH_PARAMS[name]
        for c, value in enumerate(strengths[name]):
            out = attacks.get(name, seed=seed, **{param: value}).apply(images[:1])[0]
            axes[r, c].imshow(out.permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r, c].set_title(f"{param}={value:g}", fontsize=8)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig
