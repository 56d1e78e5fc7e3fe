pub struct TrainConfig;
