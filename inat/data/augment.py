"""The augmentation both input pipelines apply: its strengths, and each image's parameters.

The tf.data pipeline (`inat.data.pipeline.augment_batch`) and the backend-neutral one
(`inat.data.loader.augment_batch`) draw six uniforms per image (zoom, y, x, flip, brightness,
contrast) and turn them into the same transform with these strengths.

The seed's ImageDataGenerator also rotated (rotation_range); a batched rotation
(ImageProjectiveTransformV3) ran at ~1,000 img/s on 2 cores at 128 px, less than half the speed of
everything below together, so zoom, shift and flip carry the geometric variety.
"""

MIN_ZOOM_SIDE = 0.8  # a random square of 80-100 % of the side, anywhere in the image, fills the output
MAX_BRIGHTNESS = 0.1  # +-10 % of full scale
CONTRAST = (0.8, 1.2)
